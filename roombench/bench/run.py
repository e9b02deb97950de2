"""`roombench run`: one headless run — start the server if needed, run Locust, gate on SLOs.

Locust runs in a child process (it monkey-patches everything with gevent; the CLI and
the servers stay unpatched). The child writes summary.json at test stop; this process
adds run metadata and SLO verdicts, rewrites it atomically and prints the table.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from roombench.exceptions import RoombenchError, UsageError
from roombench.wire.profile import DEFAULT_PROFILE, Profile, load_profile
from roombench.chat.scenario import TOKEN_ENV, Scenario
from roombench.servers import ServerProcess, start_server
from roombench.measure.summary import apply_slos, format_table, load_summary, parse_slo, write_json

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
        if self.host is None and not self.wire.speaks_like(DEFAULT_PROFILE):
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
        "-u", str(opts.users), "-r", str(opts.spawn_rate), "-t", f"{math.ceil(opts.duration + scenario.warmup)}s",
        "--host", host, "--csv", str(out / "locust"), "--only-summary", "--loglevel", "WARNING",
        "--summary-out", str(out / "summary.json"), "--live-out", str(out / "live.json"),
    ]
    if opts.processes > 1:
        cmd += ["--processes", str(opts.processes)]
    for f in fields(Scenario):
        if f.name != "token":  # by environment (child_env): a command line is visible to every local user
            cmd += ["--" + f.name.replace("_", "-"), str(getattr(scenario, f.name))]
    if opts.wire.source:
        cmd += ["--server-profile", opts.wire.source]
    return cmd


def run(opts: RunOptions) -> int:
    """Run once; exit code 0 (SLOs hold), 1 (an SLO failed). Raises RoombenchError."""
    opts.validate()
    slos = [parse_slo(s) for s in opts.slos]
    if opts.ci is not None:
        opts.ci.validate()  # bad --fail-on / --baseline: before anything starts
    run_id = new_run_id()
    out = opts.out or Path("results") / run_id
    out.mkdir(parents=True, exist_ok=True)
    server: ServerProcess | None = None
    scenario = opts.scenario
    try:
        if opts.host is None:
            if not scenario.token:
                scenario = replace(scenario, token=EMBEDDED_TOKEN)
            variant = "ws" if scenario.transport == "ws" else "py"  # the embedded server speaks it
            server = start_server(variant, token=scenario.token, log_path=str(out / "server.log"))
            host = server.url
        else:
            host = opts.host
        from roombench.transport.probe import preflight  # gevent only when a run starts
        for one in host.split(","):
            preflight(one.strip(), scenario.token or None, opts.wire, scenario.transport)
        from roombench.bench.progress import make_watch

        watch = make_watch(opts, out, scenario, slos)
        try:
            summary = _run_locust(opts, host, out, scenario, watch)
        finally:
            watch.close()
    finally:
        if server is not None:
            server.stop()
    summary["metadata"]["run_id"] = run_id
    summary["metadata"]["embedded_server"] = server is not None
    summary["metadata"]["load"] = {"users": opts.users, "spawn_rate": opts.spawn_rate, "duration_s": opts.duration}
    ok = apply_slos(summary, slos)
    ok = watch.mark(summary) and ok  # an aborted run fails its gate
    write_json(out / "summary.json", summary)
    if not opts.quiet:
        print(format_table(summary))
        print(f"results: {out}")
    if opts.ci is not None:
        ok = opts.ci.finish(out, summary, quiet=opts.quiet) and ok
    return 0 if ok else 1


def _run_locust(opts: RunOptions, host: str, out: Path, scenario: Scenario,
                on_tick: Callable[[], bool] | None = None) -> dict[str, Any]:
    cmd = locust_command(opts, host, out, scenario)
    if not opts.quiet:
        print(f"roombench: {opts.users} users x {scenario.rate} msg/s for {opts.duration:g} s against {host}", flush=True)
    limit = opts.duration + scenario.warmup + 2 * scenario.drain + 60
    with open(out / "locust.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(scenario))
        try:
            _wait_ticking(proc, limit, on_tick)
        except KeyboardInterrupt:
            # Locust got the same SIGINT: it stops, drains and writes what it measured.
            _wait_or_kill(proc, 30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            _wait_or_kill(proc, 30)
    path = out / "summary.json"
    if not path.exists():
        tail = (out / "locust.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RoombenchError(f"locust exited with code {proc.returncode} and wrote no summary: {tail[0]} (see {out}/locust.log)")
    return load_summary(path)


def _wait_ticking(proc: subprocess.Popen[bytes], limit: float, on_tick: Callable[[], bool] | None) -> None:
    """Wait for the child, calling ``on_tick`` about once a second; when it returns True, stop
    the child with SIGINT (Locust then drains and writes what it measured) and keep waiting."""
    deadline, stopping = time.monotonic() + limit, False
    while True:
        try:
            proc.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        if on_tick is not None and on_tick() and not stopping:
            stopping = True
            proc.send_signal(signal.SIGINT)


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()
