"""Live progress of a headless run, from the live.json the Locust child writes every interval.

On a terminal: one status line redrawn every second (rich's ``Live``: it knows the terminal,
so no escape codes of our own). Otherwise (CI logs, a pipe): a plain line every 10 s, so a
10-minute soak is not silent for 10 minutes and a log does not fill with redraws.

``RunWatch`` is what `roombench run` calls about once a second while it waits for the child
(``RunOptions.on_tick``): it reads live.json once and feeds the status line and, with
``--abort-on-fail``, the :class:`~roombench.bench.abort.AbortWatch`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson

from roombench.bench.abort import AbortWatch

PLAIN_EVERY_S = 10.0


def read_live(path: Path) -> dict[str, Any] | None:
    """live.json, or None while it is missing or not (yet) one (it is written atomically)."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and str(data.get("schema", "")).startswith("roombench.live/") else None


def _ms(v: Any) -> str:
    return f"{v:.3g} ms" if isinstance(v, (int, float)) else "-"


def live_elapsed(live: dict[str, Any], path: Path | None = None) -> float:
    """Seconds since the test started: the snapshot's, plus its age (it is written once per interval)."""
    elapsed = float(live.get("elapsed_s", 0.0))
    if path is not None:
        try:
            elapsed += max(0.0, time.time() - path.stat().st_mtime)
        except OSError:
            pass
    return elapsed


def format_status(live: dict[str, Any] | None, elapsed: float, total_s: float) -> str:
    """elapsed / remaining, users connected, acks/s, last interval's p99s, lost so far, saturation.
    "lost so far" is live.json's ``overdue``: pairs still missing past the ack timeout (its
    ``totals.lost`` also counts every message in flight)."""
    if live is None:
        return "starting"
    left = f"{total_s - elapsed:.0f} s left" if elapsed < total_s else "draining"
    iv = live.get("interval") or {}
    p99 = iv.get("p99_ms") or {}
    lost = live.get("overdue", (live.get("totals") or {}).get("lost", 0))
    parts = [f"{elapsed:4.0f}/{total_s:.0f} s ({left})",
             f"users {live.get('connected', '-')}/{live.get('users', '-')} connected",
             f"{iv.get('acks_per_s', 0):.0f} acks/s",
             f"p99 ack {_ms(p99.get('ack'))} fan-out {_ms(p99.get('fanout'))}",
             f"lost so far {lost}"]
    if live.get("saturated"):
        parts.append(f"WARNING generator saturated (loop lag p99 {_ms(live.get('loop_lag_p99_ms'))})")
    return "  ".join(parts)


class StatusLine:
    """One redrawn line on a terminal, plain lines every ``every_s`` otherwise."""

    def __init__(self, total_s: float, stream: TextIO | None = None, prefix: str = "",
                 every_s: float = PLAIN_EVERY_S) -> None:
        from rich.console import Console

        self.total_s, self.prefix, self.every_s = total_s, prefix, every_s
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        self.live: Any = None
        self.last_plain = -float("inf")

    @property
    def tty(self) -> bool:
        return bool(self.console.is_terminal)

    def show(self, live: dict[str, Any] | None, elapsed: float) -> None:
        line = self.prefix + format_status(live, elapsed, self.total_s)
        if self.tty:
            from rich.live import Live
            from rich.text import Text

            if self.live is None:
                self.live = Live(Text(line), console=self.console, auto_refresh=False, transient=False)
                self.live.start()
            self.live.update(Text(line, overflow="ellipsis", no_wrap=True), refresh=True)
        elif live is not None and elapsed - self.last_plain >= self.every_s:
            self.last_plain = elapsed
            print("progress: " + line, file=self.console.file, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class RunWatch:
    """The run's on_tick: read live.json, show the status, say when to stop (abort-on-fail)."""

    def __init__(self, live_path: Path, total_s: float, status: StatusLine | None = None,
                 abort: AbortWatch | None = None) -> None:
        self.path, self.total_s, self.status, self.abort = live_path, total_s, status, abort
        self.t0 = time.monotonic()
        self.stopping = False

    def __call__(self) -> bool:
        """One tick; True once the run should stop (an SLO can no longer be met)."""
        live = read_live(self.path)
        if self.status is not None:
            self.status.show(live, live_elapsed(live, self.path) if live is not None else 0.0)
        if self.abort is not None and live is not None and not self.stopping and self.abort.update(live):
            self.stopping = True
            self.close()
            print(f"roombench: aborting: {self.abort.reason}", file=sys.stderr, flush=True)
            return True
        return False

    def close(self) -> None:
        if self.status is not None:
            self.status.close()

    def mark(self, summary: dict[str, Any]) -> bool:
        """Record an abort in the summary (``metadata.aborted`` and a failed verdict); False if aborted."""
        if self.abort is None or self.abort.reason is None:
            return True
        summary["metadata"]["aborted"] = {"reason": self.abort.reason,
                                          "slo": self.abort.failed.expr if self.abort.failed else None,
                                          "after_s": round(time.monotonic() - self.t0, 1)}
        for v in summary.get("slo", []):
            if self.abort.failed is not None and v["slo"] == self.abort.failed.expr:
                v["ok"] = False  # its measured value may look fine: the run was cut short before it could fail
        return False


def make_watch(opts: Any, out: Path, scenario: Any, slos: list[Any]) -> RunWatch:
    """The watch for one run (``opts``: bench.run.RunOptions): a status line unless quiet, an
    abort rule with --abort-on-fail."""
    total = opts.duration + scenario.warmup
    show = (not opts.quiet) if opts.progress is None else opts.progress
    status = StatusLine(total, prefix=opts.label) if show else None
    abort = None
    if opts.abort_on_fail and slos:
        abort = AbortWatch(slos, users=opts.users, rate=scenario.rate, run_s=float(math.ceil(total)),
                           room_size=scenario.room_size, warmup=scenario.warmup,
                           ack_timeout_ms=scenario.ack_timeout * 1000, closed_loop=scenario.window > 0)
    return RunWatch(out / "live.json", total, status, abort)
