"""The Locust user and the lifecycle of roombench's test inside Locust.

Importing this module (locustfiles do) registers the scenario options (``options``) and the
listeners that run one :class:`~roombench.generator.Generator` per process and test run:
start it, feed Locust's stats table (``stats``), drain it on stop, reset it with Locust's
Reset button, keep rooms whole across workers. The reports, worker -> master messages, the
summary and live data are ``reports``; what this process knows of its test is
``state.RunState``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Group
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from roombench.exceptions import RoombenchError
from roombench.generator import Generator
from roombench.locust import reports, webui
from roombench.locust.options import scenario_and_profile
from roombench.locust.state import RunState
from roombench.locust.stats import STAT_NAMES, LocustBridge, log_failures

logger = logging.getLogger("roombench")

#: error kinds that are connect failures (Locust's connect row counts them as failures)
CONNECT_FAILURES = ("connect_failed", "join_timeout", "join_failed")


def current_generator(environment: Environment) -> Generator:
    """The generator of the running test (created at test start)."""
    if RunState.gen is None:  # a user spawned before test_start ran: create it now
        _start_generator(environment)
    assert RunState.gen is not None
    return RunState.gen


def _never(user: ChatUser) -> None:
    """The body of a user's stand-in greenlet, which is never started (see ChatUser.start)."""


class ChatUser(User):
    """One chat app session: one connection, its rooms, an open-loop send schedule.

    Under the one send loop (``chat.clock``, the default) a user needs no greenlet of its
    own once connected, and a parked greenlet costs ~8-10 KB of RSS (its saved stack slice
    and Python frames: more than the rest of an idle connection). Locust counts and stops
    users by the greenlets in its group (``greenlet.args[0]`` is the user), so the user
    puts an unstarted stand-in there, and a short-lived greenlet connects the session and
    hands its schedule to the clock; :meth:`stop` closes the session and kills the
    stand-in. ``ROOMBENCH_SENDER=greenlet``: Locust's own greenlet runs the schedule.
    """

    _starter: gevent.Greenlet | None = None

    def start(self, group: Group) -> gevent.Greenlet:
        gen = current_generator(self.environment)
        if gen.clock is None:
            return super().start(group)
        self._greenlet = gevent.Greenlet(_never, self)
        self._group = group
        group.add(self._greenlet)
        self._starter = gevent.spawn(self._connect_and_hand_over, gen)
        return self._greenlet

    def _connect_and_hand_over(self, gen: Generator) -> None:
        try:
            self.session = gen.new_session()
            self.session.run()  # connects, joins, and gives the schedule to the clock
        except Exception as exc:  # noqa: BLE001 - as Locust's own User.run does with on_start's
            logger.error("roombench: a user failed to start: %s: %s", type(exc).__name__, exc)
            self.environment.events.user_error.fire(user_instance=self, exception=exc, tb=exc.__traceback__)

    def stop(self, force: bool = False) -> bool:
        if self._starter is None:
            return super().stop(force)
        self._starter.kill(block=False)  # still connecting: no more of that
        self._group.killone(self._greenlet)
        self.on_stop()
        return True

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


def _start_generator(environment: Environment) -> None:
    scenario, profile = scenario_and_profile(environment)
    if not environment.host:
        raise RoombenchError("no host: pass --host http://HOST:PORT (or set it in the web UI)")
    RunState.gen = Generator(environment.host, scenario, profile)
    RunState.failures_logged = RunState.connect_failures_logged = 0
    RunState.ledger_base, RunState.counters_base = None, Counter()
    # Only acks go into Locust's "Aggregated" row and charts: a percentile over acks,
    # deliveries and reconnects together measures nothing.
    RunState.bridge = LocustBridge(environment, RunState.gen.metrics, STAT_NAMES, in_total={"ack"})
    RunState.bridge_loop = gevent.spawn(_bridge_loop, environment, RunState.gen, RunState.bridge)
    reports.attach_live(environment, RunState.gen)


def _bridge_loop(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    ticks = 0
    while True:
        gevent.sleep(1.0)
        _flush_stats(environment, gen, bridge)
        ticks += 1
        runner = environment.runner
        if ticks % reports.LIVE_EVERY == 1 and isinstance(runner, WorkerRunner) and not gen.finished:
            reports.send_progress(runner, gen)


def _flush_stats(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    bridge.flush()
    counts = reports.ledger_counts(gen)
    failed = counts.ack_timeouts + counts.ack_errors
    if failed > RunState.failures_logged:
        log_failures(environment, *STAT_NAMES["ack"], failed - RunState.failures_logged, "no confirmation")
        RunState.failures_logged = failed
    # e.g. a missing token: Locust's table must not say "0 failures"
    connect_failed = sum(gen.errors.get(kind, 0) for kind in CONNECT_FAILURES)
    if connect_failed > RunState.connect_failures_logged:
        sample = next((gen.error_samples[k] for k in CONNECT_FAILURES if k in gen.error_samples), "connect failed")
        log_failures(environment, *STAT_NAMES["connect"], connect_failed - RunState.connect_failures_logged, sample)
        RunState.connect_failures_logged = connect_failed


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    RunState.env = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        reports.register_master_messages(runner)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("roombench_finish", _on_finish_request, concurrent=True)
        runner.register_message("roombench_reset", _on_reset_request)
    if runner is not None and not isinstance(runner, WorkerRunner):
        _round_to_whole_rooms(environment, runner)
    webui.install(environment, lambda: reports.live_summary(environment))


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    RunState.env = environment
    RunState.test_no += 1
    RunState.notices = [t for t in RunState.notices if t.startswith("users rounded")]
    try:
        RunState.run_scenario = scenario_and_profile(environment)[0].to_dict()
    except RoombenchError:
        RunState.run_scenario = {}
    reports.start_test(environment)
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
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        scenario, _profile = scenario_and_profile(environment)
        reports.collect_reports(runner, timeout=2 * scenario.drain + 30)
    elif RunState.gen is not None:
        RunState.gen.finish()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    reports.stop_live_loop()
    if isinstance(environment.runner, MasterRunner):
        # Workers send their report before they report "stopped", so all are here.
        reports.write_summary(environment, RunState.reports)
        return
    gen, RunState.gen = RunState.gen, None
    if gen is None:
        return
    report = _finish(environment, gen)
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message("roombench_report", report)
    else:
        reports.write_summary(environment, {"local": report})


def _finish(environment: Environment, gen: Generator) -> dict[str, Any]:
    """Drain and reconcile, the last stats into Locust's table; the report to ship or merge."""
    gen.finish()
    if RunState.bridge_loop is not None and RunState.bridge is not None:
        RunState.bridge_loop.kill()
        _flush_stats(environment, gen, RunState.bridge)
    return reports.as_json(gen, reports.process_report(gen))


def _on_finish_request(environment: Environment, msg: Any, **_: Any) -> None:
    """Worker: the master is stopping; drain, reconcile, and send our report now (Locust's
    own quit path would not wait for it)."""
    gen, RunState.gen = RunState.gen, None
    if gen is not None:
        assert isinstance(environment.runner, WorkerRunner)
        environment.runner.send_message("roombench_report", _finish(environment, gen))


@events.reset_stats.add_listener
def _on_reset_stats(**_: Any) -> None:
    """Locust's Reset button: roombench's histograms, ledger and errors restart with its rows."""
    env = RunState.env
    if env is None:
        return
    reports.restart_live()
    if isinstance(env.runner, MasterRunner):
        env.runner.send_message("roombench_reset", None)
    else:
        _reset_measurements(RunState.gen)
    logger.info("roombench: measurements reset (histograms, ledger counts, errors)")


def _on_reset_request(environment: Environment, msg: Any, **_: Any) -> None:
    _reset_measurements(RunState.gen)


def _reset_measurements(gen: Generator | None) -> None:
    if gen is not None:
        gen.reset_measurements()  # messages in flight stay in the ledger
        reports.count_from_here(gen)
        RunState.failures_logged = RunState.connect_failures_logged = 0


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    """Locust has written its --html report by now: add roombench's section to it."""
    env = RunState.env
    path = getattr(env.parsed_options, "html_file", None) if env is not None else None
    if path and RunState.final is not None and Path(path).is_file():
        webui.add_to_html_file(path, RunState.final)


def _round_to_whole_rooms(environment: Environment, runner: Any) -> None:
    """Every process keeps its rooms whole (fan-out on one clock), so each worker must get
    whole rooms: the asked user count is rounded to rooms x workers. Also: custom
    parameters edited mid-run are refused, visibly (the generator's scenario is fixed)."""
    start = runner.start

    def rounded_start(user_count: int, spawn_rate: float, *args: Any, **kwargs: Any) -> Any:
        if environment.parsed_options is not None:
            webui.restore_secrets(environment.parsed_options)
        _refuse_mid_run_edits(environment, runner)
        workers = runner.worker_count if isinstance(runner, MasterRunner) else 0
        RunState.notices = [t for t in RunState.notices if not t.startswith("users rounded")]  # this start's, if any
        if workers and user_count > 0:
            try:
                room = scenario_and_profile(environment)[0].room_size
            except RoombenchError:
                room = 0
            if room > 1:
                block = room * workers
                n = max(1, round(user_count / block)) * block
                if n != user_count:
                    note = (f"users rounded from {user_count} to {n}: rooms of {room} stay whole on each of "
                            f"{workers} workers ({n // workers} users per worker)")
                    logger.warning("roombench: %s", note)
                    RunState.notices.append(note)
                    user_count = n
        return start(user_count, spawn_rate, *args, **kwargs)

    runner.start = rounded_start


def _refuse_mid_run_edits(environment: Environment, runner: Any) -> None:
    if runner.state not in ("running", "spawning") or not RunState.run_scenario:
        return
    try:
        now = scenario_and_profile(environment)[0].to_dict()
    except RoombenchError:
        return
    changed = [f"{k} {RunState.run_scenario.get(k)!r} -> {v!r}" for k, v in now.items()
               if k != "token" and RunState.run_scenario.get(k) != v]
    if changed:
        note = ("custom parameters changed during the run are NOT applied to it (a run's scenario is fixed); "
                "they apply when the next test starts: " + ", ".join(changed))
        logger.warning("roombench: %s", note)
        RunState.notices = [t for t in RunState.notices if not t.startswith("custom parameters")] + [note]
