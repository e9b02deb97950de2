"""`roombench run`: one headless run — start the server if needed, run Locust, gate on SLOs.

Locust runs in a child process (it monkey-patches everything with gevent; the CLI and
the servers stay unpatched). The child writes summary.json at test stop; this process
adds run metadata and SLO verdicts, rewrites it atomically and prints the table.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from roombench.exceptions import RoombenchError, UsageError
from roombench.wire.profile import DEFAULT_PROFILE, Profile, load_profile
from roombench.chat.scenario import TOKEN_ENV, Scenario
from roombench.servers import VARIANTS, ServerProcess, free_port, start_server
from roombench.servers.process import exited, spawn_group, stop_group
from roombench.measure.summary import apply_slos, format_table, load_summary, parse_slo, write_json

#: longest the Locust child may take to start the load before its own -t timer ends it
START_GRACE_S = 60.0
#: token the embedded server is started with when the user gives none
EMBEDDED_TOKEN = "roombench"

#: the locustfile the Locust child runs; by path, so importing this module (as plot and
#: report do, through sweep) never imports Locust and its gevent monkey-patching
LOCUSTFILE = str(Path(__file__).resolve().parent.parent / "locust" / "locustfile.py")


@dataclass
class RunOptions:
    """Everything `roombench run` takes besides the scenario."""

    host: str | None = None
    users: int = 20
    spawn_rate: float = 20.0
    duration: float = 10.0
    out: Path | None = None
    slos: list[str] = field(default_factory=list)
    scenario: Scenario = field(default_factory=Scenario)
    quiet: bool = False
    #: generator processes (Locust --processes): rooms stay inside one process each
    processes: int = 1
    #: how the server names the contract: a Profile, or a profile file's path or shipped name
    #: (loaded at construction; None: the contract's names). The caller folds its ack_mode
    #: into scenario.ack (Profile.ack_for) unless the user chose an ack.
    profile: Profile | str | None = None
    #: start this server variant instead of the embedded one (not with host)
    server: str | None = None
    #: a chaos spec (bench.chaos) against the server roombench started
    chaos: str | None = None
    #: a server a sweep started (host is its URL): what chaos acts on
    target: ServerProcess | None = None
    #: called about once a second while Locust runs (a progress display)
    on_tick: Callable[[], None] | None = None
    #: network impairment SPEC (servers/proxy.py): the load goes through a proxy that applies it
    impair: str | None = None
    #: live status line while the child runs (bench.progress); None: unless quiet
    progress: bool | None = None
    #: prefix of the status line (a sweep's step)
    label: str = ""
    #: stop early once an SLO can no longer be met (bench.abort)
    abort_on_fail: bool = False
    #: --baseline/--fail-on/--junit/--markdown, done after summary.json is written (bench.ciout)
    ci: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.profile, Profile):
            self.profile = load_profile(self.profile) if self.profile else DEFAULT_PROFILE

    @property
    def wire(self) -> Profile:
        """The profile, loaded."""
        assert isinstance(self.profile, Profile)
        return self.profile

    def validate(self) -> None:
        """UsageError for the first bad option."""
        if self.users < 1:
            raise UsageError("--users must be >= 1")
        if self.spawn_rate <= 0:
            raise UsageError("--spawn-rate must be > 0")
        if self.duration < 1:
            raise UsageError("--duration must be >= 1 second")
        if self.processes < 1:
            raise UsageError("--processes must be >= 1")
        if self.server is not None:
            if self.host is not None:
                raise UsageError("--server starts a server variant and --host names a running one: give one of them")
            if self.server not in VARIANTS:
                raise UsageError(f"--server {self.server!r}: unknown variant; known: {', '.join(sorted(VARIANTS))}")
            speaks = VARIANTS[self.server].transport
            if (speaks == "ws") != (self.scenario.transport == "ws"):
                raise UsageError(f"--server {self.server} speaks {'a plain WebSocket' if speaks == 'ws' else 'Socket.IO'}: "
                                 f"use --transport {'ws' if speaks == 'ws' else 'lean or compat'}")
        if self.chaos is not None:
            if self.host is not None and self.target is None:
                raise UsageError("--chaos kills and pauses a server roombench starts: drop --host (or use --server)")
            from roombench.bench.chaos import parse_chaos

            parse_chaos(self.chaos)
        if self.host is None and self.server is None and not self.wire.speaks_like(DEFAULT_PROFILE):
            raise UsageError(f"profile {self.wire.name!r} names the contract differently from the embedded "
                             "reference server: pass --host for a server that speaks it")
        self.scenario.validate()


def new_run_id() -> str:
    """Sortable, unique run id: UTC time plus a little randomness."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def child_env(scenario: Scenario) -> dict[str, str]:
    """The Locust child's environment: ours plus the token (never on its command line)."""
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if scenario.token:
        env[TOKEN_ENV] = scenario.token
    return env


def locust_command(opts: RunOptions, host: str, out: Path, scenario: Scenario) -> list[str]:
    """The Locust child's command line."""
    cmd = [
        sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless",
        # the load's end is ours (_wait_locust, from the run's start): Locust's -t counts from
        # before test_start, so a slow start (seconds on a loaded machine) ate the load; its
        # timer stays only as a backstop
        "-u", str(opts.users), "-r", str(opts.spawn_rate),
        "-t", f"{math.ceil(opts.duration + scenario.warmup + START_GRACE_S)}s",
        "--host", host, "--csv", str(out / "locust"), "--only-summary", "--loglevel", "WARNING",
        "--summary-out", str(out / "summary.json"), "--live-out", str(out / "live.json"),
    ]
    if opts.processes > 1:
        # a free port for master <-> workers, not Locust's fixed 5557: two runs at once must not collide
        port = str(free_port("127.0.0.1"))
        cmd += ["--processes", str(opts.processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                "--master-host", "127.0.0.1", "--master-port", port]
    for f in fields(Scenario):
        if f.name != "token":  # by environment (child_env): a command line is visible to every local user
            cmd += ["--" + f.name.replace("_", "-"), str(getattr(scenario, f.name))]
    if opts.wire.source:
        cmd += ["--server-profile", opts.wire.source]
    return cmd


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the work (a BaseException, like KeyboardInterrupt: no
    ``except RoombenchError`` may swallow it). ``exit_code``: 130 / 143."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Signals:
    """SIGINT and SIGTERM, handled alike while a run or sweep is on: the first one is
    remembered; outside a deferred section it raises :class:`Interrupted` at once, inside one
    (Locust running, results being written) the code there checks ``signum`` and stops cleanly."""

    def __init__(self) -> None:
        self.depth = 0
        self.signum: int | None = None
        self.deferred = False
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            return  # a second signal must not break the cleanup of the first (all of it is bounded)
        self.signum = signum
        if not self.deferred:
            raise Interrupted(signum)


_SIGNALS = _Signals()


@contextmanager
def interruptible() -> Iterator[_Signals]:
    """Install the SIGINT/SIGTERM handlers for a run or sweep (nested: the outer one's stay);
    only from the main thread, as Python requires."""
    state = _SIGNALS
    if state.depth == 0:
        state.signum, state.deferred = None, False
        state._saved = {}
        if threading.current_thread() is threading.main_thread():  # elsewhere: the caller's handlers stay
            for sig in (signal.SIGINT, signal.SIGTERM):
                state._saved[sig] = signal.signal(sig, state._handle)
    state.depth += 1
    try:
        yield state
    finally:
        state.depth -= 1
        if state.depth == 0:
            for sig, old in state._saved.items():
                signal.signal(sig, old)


@contextmanager
def _deferred(state: _Signals) -> Iterator[None]:
    before, state.deferred = state.deferred, True
    try:
        yield
    finally:
        state.deferred = before


def run(opts: RunOptions) -> int:
    """Run once; exit code 0 (SLOs hold), 1 (an SLO failed), 130 / 143 (SIGINT / SIGTERM
    stopped it: what was measured is written, marked ``metadata.interrupted``, and no SLO
    gate passes). Raises RoombenchError, or Interrupted when a signal came before Locust ran."""
    opts.validate()
    slos = [parse_slo(s) for s in opts.slos]
    if opts.ci is not None:
        opts.ci.validate()  # bad --fail-on / --baseline: before anything starts
    run_id = new_run_id()
    out = opts.out or Path("results") / run_id
    out.mkdir(parents=True, exist_ok=True)
    server: ServerProcess | None = None
    scenario = opts.scenario
    with interruptible() as sig:
        try:
            if opts.host is None:
                server, scenario = _start_own_server(opts, scenario, out)
                host = server.url
            else:
                host = opts.host
            from roombench.transport.probe import preflight  # gevent only when a run starts
            for one in host.split(","):
                preflight(one.strip(), scenario.token or None, opts.wire, scenario.transport)
            from roombench.bench.progress import make_watch  # status line, --abort-on-fail

            watch = make_watch(opts, out, scenario, slos)
            with _deferred(sig):
                try:
                    summary, chaos = _run_impaired(opts, host, out, scenario, server or opts.target, sig, watch)
                finally:
                    watch.close()
        finally:
            if server is not None:
                with _deferred(sig):
                    server.stop()
        with _deferred(sig):
            return _finish(opts, summary, chaos, slos, run_id, out, server, sig.signum, watch)


def _start_own_server(opts: RunOptions, scenario: Scenario, out: Path) -> tuple[ServerProcess, Scenario]:
    """The embedded server (py, or ws for --transport ws), or the --server variant."""
    if not scenario.token:
        scenario = replace(scenario, token=EMBEDDED_TOKEN)
    variant = opts.server or ("ws" if scenario.transport == "ws" else "py")  # the embedded one speaks it
    return start_server(variant, token=scenario.token, log_path=str(out / "server.log")), scenario


def _finish(opts: RunOptions, summary: dict[str, Any], chaos: list[dict[str, Any]] | None, slos: list[Any],
            run_id: str, out: Path, server: ServerProcess | None, signum: int | None, watch: Any = None) -> int:
    meta = summary["metadata"]
    meta["run_id"] = run_id
    meta["embedded_server"] = server is not None
    if opts.server is not None:
        meta["server_variant"] = opts.server
    meta["load"] = {"users": opts.users, "spawn_rate": opts.spawn_rate, "duration_s": opts.duration}
    if chaos is not None:
        meta["chaos_spec"] = opts.chaos
        started = meta.get("started") or 0.0  # the run's start: what plots count time from
        chaos = [{"t": round(a["at"] - started, 3), **{k: v for k, v in a.items() if k != "at"}} for a in chaos]
        meta["chaos"] = chaos
    meta["interrupted"] = signum is not None
    ok = apply_slos(summary, slos)
    if watch is not None:
        ok = watch.mark(summary) and ok  # aborted (--abort-on-fail): its gate fails
    write_json(out / "summary.json", summary)
    if not opts.quiet:
        print(format_table(summary))
        if chaos:
            print(f"chaos: {len(chaos)} actions: " + ", ".join(f"{a['action']}@{a['t']:g}s" for a in chaos))
        if signum is not None:
            print(f"interrupted by {signal.Signals(signum).name}: the results cover only what ran")
        print(f"results: {out}")
    if opts.ci is not None:
        ok = opts.ci.finish(out, summary, quiet=opts.quiet) and ok
    if signum is not None:
        return 128 + signum  # an interrupted run never passes a gate
    return 0 if ok else 1


def _run_locust(opts: RunOptions, host: str, out: Path, scenario: Scenario, server: ServerProcess | None,
                sig: _Signals, watch: Callable[[], bool] | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """Run the Locust child to its end (or a signal's); its summary and the chaos actions."""
    cmd = locust_command(opts, host, out, scenario)
    if not opts.quiet:
        print(f"roombench: {opts.users} users x {scenario.rate} msg/s for {opts.duration:g} s against {host}", flush=True)
    chaos = None
    if opts.chaos is not None:
        from roombench.bench.chaos import Chaos, parse_chaos

        assert server is not None  # validate() refused --chaos with a server we did not start
        chaos = Chaos(parse_chaos(opts.chaos), server, horizon=opts.duration + scenario.warmup)
    load_s = opts.duration + scenario.warmup
    started = LoadStart(out / "live.json")
    limit = load_s + 2 * scenario.drain + START_GRACE_S
    # after SIGTERM Locust stops the users, drains (up to `drain` s, twice with reconnects) and
    # writes its summary; past this grace its whole group is killed
    grace = 2 * scenario.drain + 15
    (out / "live.json").unlink(missing_ok=True)  # an earlier run's in a reused --out would mislead chaos
    with open(out / "locust.log", "wb") as log:
        # its own process group (Locust's --processes workers are forked into it), stopped as one
        proc = spawn_group(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(scenario))
        try:
            if chaos is not None:
                chaos.start(origin=started)
            _wait_locust(proc, opts, sig, limit, grace, watch,
                         load_end=lambda: None if (t0 := started()) is None else t0 + load_s)
        finally:
            actions = chaos.stop() if chaos is not None else None
            stop_group(proc, 0)  # what is left of its group (the leader is exited, or killed now)
    path = out / "summary.json"
    if not path.exists():
        if sig.signum is not None:
            raise Interrupted(sig.signum)  # stopped before Locust measured anything
        tail = (out / "locust.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RoombenchError(f"locust exited with code {proc.returncode} and wrote no summary: {tail[0]} (see {out}/locust.log)")
    return load_summary(path), actions


class LoadStart:
    """The run's start (epoch s, summary.json ``metadata.started``) as the first live.json
    tells it (its mtime − ``elapsed_s``): None until the first interval closes, then fixed.
    Asked often, it reads the file at most every 0.2 s."""

    def __init__(self, live_json: Path) -> None:
        self.path = live_json
        self.epoch: float | None = None
        self._next_read = 0.0

    def __call__(self) -> float | None:
        if self.epoch is None and time.monotonic() >= self._next_read:
            self._next_read = time.monotonic() + 0.2
            try:
                written = self.path.stat().st_mtime
                elapsed = json.loads(self.path.read_bytes())["elapsed_s"]
            except (OSError, ValueError, KeyError, TypeError):
                return None  # not written yet (it is replaced atomically)
            if isinstance(elapsed, (int, float)):
                self.epoch = written - elapsed
        return self.epoch


def _wait_locust(proc: subprocess.Popen[bytes], opts: RunOptions, sig: _Signals, limit: float, grace: float,
                 watch: Callable[[], bool] | None = None, load_end: Callable[[], float | None] | None = None) -> None:
    """Wait for the Locust child; at ``load_end()`` (epoch s, once known), on a signal, or past
    ``limit`` s SIGTERM its master, which stops the load and writes what it measured, and
    SIGKILL its group after ``grace`` s. ``opts.on_tick()`` about once a second meanwhile."""
    start = time.monotonic()
    next_tick = start + 1.0
    stop_by: float | None = None
    while not exited(proc):  # not reaped yet: stop_group then kills what is left of its group
        now = time.monotonic()
        end = load_end() if load_end is not None and stop_by is None else None
        load_over = end is not None and time.time() >= end
        if stop_by is None and (sig.signum is not None or now - start > limit or load_over):
            proc.send_signal(signal.SIGTERM)  # the master only: it tells its workers to report and quit
            stop_by = now + grace
        if stop_by is not None and now > stop_by:
            break
        if opts.on_tick is not None and now >= next_tick:
            opts.on_tick()
        if watch is not None and now >= next_tick and watch() and stop_by is None:
            proc.send_signal(signal.SIGTERM)  # --abort-on-fail: Locust stops and writes what it measured
            stop_by = now + grace
        if now >= next_tick:
            next_tick = now + 1.0
        time.sleep(0.05)


def _run_impaired(opts: RunOptions, host: str, out: Path, scenario: Scenario, server: ServerProcess | None,
                  sig: _Signals, watch: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """Locust against ``host``, or with ``opts.impair`` against proxies in front of it: one
    per URL of a server spread over processes (py-redis), each its own process, stopped in
    ``finally`` (each also exits when our end of its stdin closes, so none can outlive us).
    The summary's metadata.impair says what they did: ``proxy`` sums their counts,
    ``proxies`` has each URL's."""
    if not opts.impair:
        return _run_locust(opts, host, out, scenario, server, sig, watch)
    from roombench.servers.proxy import parse_spec

    imp = parse_spec(opts.impair)
    targets = [h.strip() for h in host.split(",") if h.strip()]
    logs = [out / "proxy.log"] if len(targets) == 1 else [out / f"proxy-{i}.log" for i in range(1, len(targets) + 1)]
    proxies: list[subprocess.Popen[str]] = []
    per_target: list[dict[str, Any]] = []
    try:
        for target, log_path in zip(targets, logs):
            with open(log_path, "wb") as log:  # the child keeps its own copy of the fd
                proxies.append(subprocess.Popen(
                    [sys.executable, "-m", "roombench.servers.proxy", "--to", target, "--impair", opts.impair,
                     "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
        proxied = ",".join(_proxy_url(p, t, log) for p, t, log in zip(proxies, targets, logs))
        summary, chaos = _run_locust(opts, proxied, out, scenario, server, sig, watch)
    finally:
        for target, proxy in zip(targets, proxies):
            per_target.append({"target": target, **_stop_proxy(proxy)})
    total: dict[str, Any] = {}
    for stats in per_target:
        for k, v in stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    summary["metadata"]["impair"] = {**imp.to_dict(), "target": host, "proxy": total, "proxies": per_target}
    return summary, chaos


def _stop_proxy(proxy: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop one proxy (EOF on its stdin) and return the counts its last line reported."""
    from roombench.servers.proxy import STATS

    try:
        rest, _ = proxy.communicate(timeout=5)  # closes its stdin: EOF stops the proxy
    except subprocess.TimeoutExpired:
        proxy.kill()
        rest, _ = proxy.communicate()
    for line in (rest or "").splitlines():
        if line.startswith(STATS + " "):
            return dict(json.loads(line[len(STATS) + 1:]))
    return {}


def _proxy_url(proxy: subprocess.Popen[str], host: str, log: Path) -> str:
    """The proxy's URL once its READY line came (same scheme as ``host``); RoombenchError if it died."""
    from roombench.servers.proxy import parse_ready

    assert proxy.stdout is not None
    line = proxy.stdout.readline()  # the proxy prints READY or exits: no hang
    where = parse_ready(line)
    if where is None:
        proxy.wait(5)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RoombenchError(f"the impairment proxy did not start: {tail[0]} (see {log})")
    scheme = host.split("://", 1)[0]
    return f"{scheme}://{where[0]}:{where[1]}"
