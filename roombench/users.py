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

import logging
from typing import Any

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from .exceptions import RoombenchError
from .generator import Generator, merge_reports
from .metrics import LocustBridge, log_failures
from .protocol import DEFAULT_PROFILE
from .scenario import Scenario, add_arguments
from .summary import build_summary, write_json

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
    bridge: gevent.Greenlet | None = None
    failures_logged = 0


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
    parser.add_argument("--summary-out", default="", help="write roombench's summary.json here at test stop")


def _start_generator(environment: Environment) -> None:
    scenario = Scenario.from_namespace(environment.parsed_options)
    if not environment.host:
        raise RoombenchError("no host: pass --host http://HOST:PORT (or set it in the web UI)")
    _State.gen = Generator(environment.host, scenario, DEFAULT_PROFILE)
    _State.failures_logged = 0
    _State.bridge = gevent.spawn(_bridge_loop, environment, _State.gen)


def _bridge_loop(environment: Environment, gen: Generator) -> None:
    bridge = LocustBridge(environment, gen.metrics, STAT_NAMES)
    while True:
        gevent.sleep(1.0)
        bridge.flush()
        counts = gen.ledger.counts()
        failed = counts.ack_timeouts + counts.ack_errors
        if failed > _State.failures_logged:
            log_failures(environment, *STAT_NAMES["ack"], failed - _State.failures_logged, "no confirmation")
            _State.failures_logged = failed


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return
    try:
        _start_generator(environment)
    except RoombenchError as exc:
        logger.error("roombench: %s", exc)
        if environment.runner is not None:
            gevent.spawn_later(0, environment.runner.quit)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    if _State.gen is not None:
        _State.gen.finish()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    gen, _State.gen = _State.gen, None
    if gen is None:
        return
    gen.finish()
    if _State.bridge is not None:
        _State.bridge.kill()
        LocustBridge(environment, gen.metrics, STAT_NAMES).flush()
    report = gen.report()
    out = getattr(environment.parsed_options, "summary_out", "")
    if out:
        summary = build_summary(merge_reports([report]), target=gen.host, scenario=gen.scenario.to_dict())
        write_json(out, summary)
