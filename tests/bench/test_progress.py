"""Live progress of `roombench run`: a redrawn line on a terminal (a real pty), plain lines
otherwise, nothing with --quiet; the status text from a live.json snapshot."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roombench.bench.progress import format_status, live_elapsed, read_live

SMALL = ["--users", "4", "--spawn-rate", "50", "--duration", "3", "--room-size", "2", "--rate", "5", "--drain", "2"]
CLI = [sys.executable, "-m", "roombench.cli", "run"]


def run_on_pty(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(90)
def test_status_line_is_redrawn_on_a_terminal(tmp_path: Path) -> None:
    code, out = run_on_pty([*CLI, *SMALL, "--out", str(tmp_path)])
    assert code == 0, out
    assert out.count("s left") >= 2, out  # one line per second, redrawn
    assert "\x1b[" in out  # rich's cursor movement / erase: a redraw, not new lines
    assert "progress:" not in out  # the plain form is for non-terminals
    assert "metric" in out and "results:" in out  # the table still follows


@pytest.mark.timeout(90)
def test_plain_lines_without_a_terminal_and_none_when_quiet(tmp_path: Path) -> None:
    res = subprocess.run([*CLI, *SMALL, "--out", str(tmp_path / "a")], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("progress: ")]
    assert 1 <= len(lines) <= 2, res.stdout  # every 10 s: the first one only in a 3 s run
    assert "\x1b[" not in res.stdout
    quiet = subprocess.run([*CLI, *SMALL, "--out", str(tmp_path / "b"), "--quiet"], capture_output=True,
                           text=True, timeout=60, check=False)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stdout + quiet.stderr


def test_status_text_from_a_live_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "live.json"
    assert read_live(path) is None
    path.write_text('{"schema": "roombench.live/1", "elapsed_s": 12.4, "users": 20, "connected": 19, '
                    '"interval": {"start": 1, "length": 1.0, "acks_per_s": 95.2, "deliveries_per_s": 800, '
                    '"p99_ms": {"ack": 3.14159, "fanout": null}}, "totals": {"lost": 9}, "overdue": 2, "saturated": true, '
                    '"loop_lag_p99_ms": 31.5}')
    live = read_live(path)
    assert live is not None and 12.4 <= live_elapsed(live, path) < 14
    line = format_status(live, 12.4, 60)
    for part in ("12/60 s (48 s left)", "users 19/20 connected", "95 acks/s", "p99 ack 3.14 ms fan-out -",
                 "lost so far 2", "WARNING generator saturated (loop lag p99 31.5 ms)"):
        assert part in line, (part, line)
    path.write_text("{half a fi")
    assert read_live(path) is None
    assert format_status(None, 0.0, 10) == "starting"
    assert "(draining)" in format_status(live, 61, 60)
