"""Locust users and the wiring of roombench into Locust's events.

Importing this module (locustfiles do) registers the scenario options as Locust custom
arguments (shown in the web UI, usable headless) and the listeners that run one
:class:`~roombench.generator.Generator` per process and test run.

Locust's stats table shows every metric as ``Type / Name``:

========== =============== ===================================================
Type       Name            what
========== =============== ===================================================
ack        send_message    send -> confirmation (failures: ack timeouts/errors)
fanout     new_message     send -> each other member has it (one row, aggregated)
connect    socket.io       first connect
reconnect  socket.io       drop -> connected again
rejoin     join            connected -> every room re-joined
backfill   fetch / merge   REST fetch of what was missed / merge
backfill   total           drop -> whole again (rejoined, fetched, merged)
typing     user_typing     typing -> each other member told
read       message_read    mark_read -> each other member told
========== =============== ===================================================
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from roombench.exceptions import RoombenchError
from roombench.generator import Generator
from roombench.locust.live import LiveMaster, attach
from roombench.locust.stats import LocustBridge, log_failures
from roombench.wire.profile import DEFAULT_PROFILE, Profile, ack_follows_profile, load_profile
from roombench.chat.scenario import Scenario, add_arguments
from roombench.measure.intervals import write_files
from roombench.measure.report import ProcessReport
from roombench.measure.summary import build_summary, write_json

logger = logging.getLogger("roombench")

STAT_NAMES: dict[str, tuple[str, str]] = {
    "ack": ("ack", "send_message"),
    "fanout": ("fanout", "new_message"),
    "connect": ("connect", "socket.io"),
    "reconnect": ("reconnect", "socket.io"),
    "rejoin": ("rejoin", "join"),
    "fetch": ("backfill", "fetch"),
    "merge": ("backfill", "merge"),
    "backfill": ("backfill", "total"),
    "typing": ("typing", "user_typing"),
    "read_receipt": ("read", "message_read"),
}


class _State:
    """This process's current run (Locust may run several tests in one process)."""

    gen: Generator | None = None
    bridge: LocustBridge | None = None
    bridge_loop: gevent.Greenlet | None = None
    failures_logged = 0
    #: master only: the workers' reports of the current run
    reports: list[dict[str, Any]] = []
    #: master only, with --live-out: the workers' live snapshots
    live: LiveMaster | None = None


def current_generator(environment: Environment) -> Generator:
    """The generator of the running test (created at test start)."""
    if _State.gen is None:  # a user spawned before test_start ran: create it now
        _start_generator(environment)
    assert _State.gen is not None
    return _State.gen


class ChatUser(User):
    """One chat app session: one connection, its rooms, an open-loop send schedule."""

    def on_start(self) -> None:
        self.session = current_generator(self.environment).new_session()

    @task
    def chat(self) -> None:
        # The whole session is one task call: the send loop ends only with the run.
        self.session.run()
        while True:
            gevent.sleep(3600)

    def on_stop(self) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    # Locust's web UI only shows options added to the parser itself, not to a group.
    add_arguments(parser, include_locust_ui=True)
    ack_follows_profile(parser)
    # not --profile: Locust has its own (a label that groups test runs)
    parser.add_argument("--server-profile", default="", include_in_web_ui=True, metavar="FILE",
                        help="profile TOML naming the server's events, fields, path, namespace, token placement "
                        "and backfill URL (a path or a shipped profile's name); empty: the contract's names")
    parser.add_argument("--summary-out", default="", help="write roombench's summary.json here at test stop "
                        "(and beside it the interval histograms: <metric>.hlog, intervals.json)")
    parser.add_argument("--live-out", default="", help="rewrite this live.json (progress) every interval")


def _scenario_and_profile(environment: Environment) -> tuple[Scenario, Profile]:
    options = environment.parsed_options
    path = getattr(options, "server_profile", "")
    profile = load_profile(path) if path else DEFAULT_PROFILE
    # --ack "profile" (the default) means: confirm the way the profile's ack_mode says
    given = vars(options) if options is not None else {}
    resolved = argparse.Namespace(**{**given, "ack": profile.ack_for(given.get("ack"))})
    return Scenario.from_namespace(resolved), profile


def _start_generator(environment: Environment) -> None:
    scenario, profile = _scenario_and_profile(environment)
    if not environment.host:
        raise RoombenchError("no host: pass --host http://HOST:PORT (or set it in the web UI)")
    _State.gen = Generator(environment.host, scenario, profile)
    _State.failures_logged = 0
    _State.bridge = LocustBridge(environment, _State.gen.metrics, STAT_NAMES)
    _State.bridge_loop = gevent.spawn(_bridge_loop, environment, _State.gen, _State.bridge)
    _attach_live(environment, _State.gen)


def _bridge_loop(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    while True:
        gevent.sleep(1.0)
        _flush_stats(environment, gen, bridge)


def _flush_stats(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    bridge.flush()
    counts = gen.ledger.counts()
    failed = counts.ack_timeouts + counts.ack_errors
    if failed > _State.failures_logged:
        log_failures(environment, *STAT_NAMES["ack"], failed - _State.failures_logged, "no confirmation")
        _State.failures_logged = failed


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("roombench_report", _on_worker_report)
        runner.register_message("roombench_live", _on_worker_live)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("roombench_finish", _on_finish_request, concurrent=True)


def _on_worker_report(environment: Environment, msg: Any, **_: Any) -> None:
    _State.reports.append(msg.data)


def _on_finish_request(environment: Environment, msg: Any, **_: Any) -> None:
    """Worker: the master is stopping; drain, reconcile, and send our report now (Locust's
    own quit path would not wait for it)."""
    gen, _State.gen = _State.gen, None
    if gen is not None:
        assert isinstance(environment.runner, WorkerRunner)
        environment.runner.send_message("roombench_report", _finish(environment, gen))


def _collect_reports(runner: MasterRunner, timeout: float) -> None:
    """Master: ask every worker for its report and wait until all are in."""
    expected = runner.worker_count
    runner.send_message("roombench_finish", None)
    deadline = time.monotonic() + timeout
    while len(_State.reports) < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if len(_State.reports) < expected:
        logger.error("roombench: only %d of %d workers reported; the summary covers those", len(_State.reports), expected)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        _State.reports = []
        _State.live = None
        return
    try:
        _start_generator(environment)
    except RoombenchError as exc:
        logger.error("roombench: %s", exc)
        if environment.runner is not None:
            gevent.spawn_later(0, environment.runner.quit)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        scenario, _profile = _scenario_and_profile(environment)
        _collect_reports(runner, timeout=2 * scenario.drain + 30)
    elif _State.gen is not None:
        _State.gen.finish()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        # Workers send their report before they report "stopped", so all are here.
        _write_summary(environment, _State.reports)
        return
    gen, _State.gen = _State.gen, None
    if gen is None:
        return
    report = _finish(environment, gen)
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message("roombench_report", report)
    else:
        _write_summary(environment, [report])


def _finish(environment: Environment, gen: Generator) -> dict[str, Any]:
    gen.finish()
    if _State.bridge_loop is not None and _State.bridge is not None:
        _State.bridge_loop.kill()
        _flush_stats(environment, gen, _State.bridge)
    return gen.report().to_json()


def _write_summary(environment: Environment, reports: list[dict[str, Any]]) -> None:
    out = getattr(environment.parsed_options, "summary_out", "")
    if not out or not reports:
        return
    scenario, profile = _scenario_and_profile(environment)
    try:
        merged = ProcessReport.merge([ProcessReport.from_json(r) for r in reports])
    except RoombenchError as exc:  # e.g. a worker of another version or run: one line, no summary
        logger.error("roombench: %s", exc)
        return
    summary = build_summary(merged, target=environment.host or "", scenario=scenario.to_dict(),
                            extra={"profile": profile.to_dict()})
    write_json(out, summary)
    _write_intervals(out, merged)


# -- interval histograms and live progress (measure.intervals, locust.live) --------------


def _write_intervals(summary_out: str, merged: ProcessReport) -> None:
    """<metric>.hlog and intervals.json beside summary.json."""
    try:
        write_files(Path(summary_out).parent, merged.interval_s, merged.intervals)
    except OSError as exc:
        logger.error("roombench: cannot write the interval logs: %s", exc)


def _attach_live(environment: Environment, gen: Generator) -> None:
    path = getattr(environment.parsed_options, "live_out", "") if environment.parsed_options else ""
    if not path:
        return
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        attach(gen, path, send=lambda snap: runner.send_message("roombench_live", snap))
    else:
        attach(gen, path)


def _on_worker_live(environment: Environment, msg: Any, **_: Any) -> None:
    runner = environment.runner
    path = getattr(environment.parsed_options, "live_out", "")
    if not path or not isinstance(runner, MasterRunner):
        return
    if _State.live is None:
        _State.live = LiveMaster(path)
    _State.live.add(str(msg.node_id), msg.data, max(1, runner.worker_count))
