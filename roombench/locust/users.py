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
recover    socket.io       drop -> reconnected with the session recovered (--recovery csr|auto)
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
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from roombench.exceptions import RoombenchError
from roombench.generator import Generator
from roombench.chat.ledger import LedgerCounts
from roombench.locust import webui
from roombench.locust.live import LiveMaster, attach
from roombench.locust.stats import LocustBridge, log_failures
from roombench.wire.profile import DEFAULT_PROFILE, Profile, ack_follows_profile, load_profile
from roombench.chat.scenario import Scenario, add_arguments
from roombench.measure.intervals import Interval, write_files
from roombench.measure.metrics import percentiles
from roombench.measure.report import ProcessReport
from roombench.measure.summary import build_summary, saturation, write_json

logger = logging.getLogger("roombench")

STAT_NAMES: dict[str, tuple[str, str]] = {
    "ack": ("ack", "send_message"),
    "fanout": ("fanout", "new_message"),
    "connect": ("connect", "socket.io"),
    "reconnect": ("reconnect", "socket.io"),
    "recover": ("recover", "socket.io"),
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
    connect_failures_logged = 0
    #: master only: the workers' final reports of the current run, by worker id
    reports: dict[str, dict[str, Any]] = {}
    #: master only: each worker's latest live report of this run, (time received, report)
    live_reports: dict[str, tuple[float, dict[str, Any]]] = {}
    #: master only: the workers connected when the test started (one that never reports is dead)
    run_workers: set[str] = set()
    #: tests started in this process (a summary file per test; the UI says which test)
    test_no = 0
    #: this process's ledger counts at the last Reset (subtracted from what it reports)
    ledger_base: LedgerCounts | None = None
    counters_base: Counter[str] = Counter()
    #: the scenario the current test runs (the master has no generator to ask)
    run_scenario: dict[str, Any] = {}
    #: what the UI shows above the numbers: refused edits, rounded user counts...
    notices: list[str] = []
    #: unix time of the last Reset (the chart starts there)
    reset_at = 0.0
    #: the live chart's intervals so far (master: all workers' added), by start
    live_intervals: dict[float, Interval] = {}
    #: this process: the start of the last interval already in a live report
    live_until = float("-inf")
    #: the last test's final summary (served after stop), and the file it went to
    final: dict[str, Any] | None = None
    summary_file: str = ""
    saturation_logged = False
    live_cache: tuple[float, dict[str, Any] | None] = (0.0, None)
    live_loop: gevent.Greenlet | None = None
    env: Environment | None = None
    #: master only, with --live-out: the workers' live.json snapshots
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
                        "(and beside it the interval histograms: <metric>.hlog, intervals.json); the 2nd test "
                        "of one Locust process goes to test-2/NAME beside it, and so on: no overwrite")
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
    _State.failures_logged = _State.connect_failures_logged = 0
    _State.ledger_base, _State.counters_base = None, Counter()
    # Only acks go into Locust's "Aggregated" row and charts: a percentile over acks,
    # deliveries and reconnects together measures nothing.
    _State.bridge = LocustBridge(environment, _State.gen.metrics, STAT_NAMES, in_total={"ack"})
    _State.bridge_loop = gevent.spawn(_bridge_loop, environment, _State.gen, _State.bridge)
    _attach_live(environment, _State.gen)


def _bridge_loop(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    ticks = 0
    while True:
        gevent.sleep(1.0)
        _flush_stats(environment, gen, bridge)
        ticks += 1
        if ticks % LIVE_EVERY == 1 and isinstance(environment.runner, WorkerRunner) and not gen.finished:
            # the master's live page merges these (its final summary uses the final reports)
            environment.runner.send_message("roombench_progress", _as_json(gen, _live_report(gen)))


#: seconds between a worker's live reports to the master (and the UI's chart points)
LIVE_EVERY = 2
#: error kinds that are connect failures (Locust's connect row counts them as failures)
CONNECT_FAILURES = ("connect_failed", "join_timeout", "join_failed")


def _flush_stats(environment: Environment, gen: Generator, bridge: LocustBridge) -> None:
    bridge.flush()
    counts = _ledger_counts(gen)
    failed = counts.ack_timeouts + counts.ack_errors
    if failed > _State.failures_logged:
        log_failures(environment, *STAT_NAMES["ack"], failed - _State.failures_logged, "no confirmation")
        _State.failures_logged = failed
    # e.g. a missing token: Locust's table must not say "0 failures"
    connect_failed = sum(gen.errors.get(kind, 0) for kind in CONNECT_FAILURES)
    if connect_failed > _State.connect_failures_logged:
        sample = next((gen.error_samples[k] for k in CONNECT_FAILURES if k in gen.error_samples), "connect failed")
        log_failures(environment, *STAT_NAMES["connect"], connect_failed - _State.connect_failures_logged, sample)
        _State.connect_failures_logged = connect_failed


def _ledger_counts(gen: Generator) -> LedgerCounts:
    """The generator's ledger counts since the last Reset."""
    counts = gen.ledger.counts()
    base = _State.ledger_base
    if base is None:
        return counts
    b = base.to_dict()
    return LedgerCounts.from_dict({k: v - b[k] for k, v in counts.to_dict().items()})


def _report(gen: Generator) -> ProcessReport:
    """This process's report, counted from the last Reset."""
    report = gen.report()
    report.ledger = _ledger_counts(gen)
    report.counters.subtract(_State.counters_base)
    report.counters = +report.counters  # drop the zeros
    return report


def _live_report(gen: Generator) -> ProcessReport:
    """This process's report while it runs, with only the intervals closed since the last
    one (a report of every interval copies them all: ~0.4 s of a blocked loop 10 minutes
    into a run, which would inflate the very latencies it reports)."""
    if gen.finished:
        return _report(gen)
    log = gen.intervals
    full = log.intervals
    i = len(full)
    while i > 0 and full[i - 1].start > _State.live_until:
        i -= 1
    log.intervals = full[i:]  # report() copies what the log holds; it does not yield
    try:
        report = _report(gen)
    finally:
        log.intervals = full
    if report.intervals:
        _State.live_until = report.intervals[-1].start
    return report


def _room_sizes(gen: Generator) -> dict[str, int]:
    """Rooms by planned size (deterministic, so a distributed run can be compared with one process)."""
    rooms = Counter(room for no in gen.sessions for room in gen.rooms_for(no))
    return {str(size): n for size, n in sorted(Counter(rooms.values()).items())}


def _as_json(gen: Generator, report: ProcessReport) -> dict[str, Any]:
    """What a worker ships: the report plus its room sizes (from_json ignores the extra key)."""
    return {**report.to_json(), "room_sizes": _room_sizes(gen)}


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _State.env = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("roombench_report", _on_worker_report)
        runner.register_message("roombench_live", _on_worker_live)  # live.json (--live-out)
        runner.register_message("roombench_progress", _on_worker_progress)  # the web UI's live summary
    elif isinstance(runner, WorkerRunner):
        runner.register_message("roombench_finish", _on_finish_request, concurrent=True)
        runner.register_message("roombench_reset", _on_reset_request)
    if runner is not None and not isinstance(runner, WorkerRunner):
        _round_to_whole_rooms(environment, runner)
    webui.install(environment, lambda: live_summary(environment))


def _on_worker_report(environment: Environment, msg: Any, **_: Any) -> None:
    _State.reports[msg.node_id] = msg.data


def _on_worker_progress(environment: Environment, msg: Any, **_: Any) -> None:
    if msg.node_id in _State.reports:  # a late live report must not replace the final one
        return
    data = dict(msg.data)
    try:  # the intervals closed since the worker's last live report: into the chart
        _add_live_intervals([Interval.from_json(d) for d in data.pop("intervals", [])])
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("roombench: broken live report from worker %s: %s", msg.node_id, exc)
        return
    _State.live_reports[msg.node_id] = (time.time(), data)


def _add_live_intervals(intervals: list[Interval]) -> None:
    for iv in intervals:
        mine = _State.live_intervals.get(iv.start)
        if mine is None:
            mine = _State.live_intervals[iv.start] = Interval(iv.start, 0.0)
        mine.add(iv)  # several workers' intervals of the same start: added exactly


def _on_reset_request(environment: Environment, msg: Any, **_: Any) -> None:
    if _State.gen is not None:
        _reset_measurements(_State.gen)


@events.reset_stats.add_listener
def _on_reset_stats(**_: Any) -> None:
    """Locust's Reset button: roombench's histograms, ledger and errors restart with its rows."""
    env = _State.env
    if env is None:
        return
    _State.reset_at = time.time()
    _State.live_intervals = {}
    _State.live_cache = (0.0, None)
    if isinstance(env.runner, MasterRunner):
        _State.live_reports = {}
        env.runner.send_message("roombench_reset", None)
    elif _State.gen is not None:
        _reset_measurements(_State.gen)
    logger.info("roombench: measurements reset (histograms, ledger counts, errors)")


def _reset_measurements(gen: Generator) -> None:
    # what Generator._end_warmup does, plus the counts; messages in flight stay in the ledger
    gen.metrics.reset()
    gen._lag.clear()
    gen._lag_ticked = 0
    gen.intervals.drop_histograms()
    gen._t0, gen._cpu0 = time.perf_counter(), time.process_time()
    gen.started = time.time()
    gen.errors.clear()
    # counters and ledger are not cleared but counted from here: the interval log takes
    # per-interval deltas of both, which a clear would turn negative
    _State.counters_base = Counter(gen.counters)
    _State.ledger_base = gen.ledger.counts()
    _State.failures_logged = _State.connect_failures_logged = 0


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
        _State.notices = [t for t in _State.notices if not t.startswith("users rounded")]  # this start's, if any
        if workers and user_count > 0:
            try:
                room = _scenario_and_profile(environment)[0].room_size
            except RoombenchError:
                room = 0
            if room > 1:
                block = room * workers
                n = max(1, round(user_count / block)) * block
                if n != user_count:
                    note = (f"users rounded from {user_count} to {n}: rooms of {room} stay whole on each of "
                            f"{workers} workers ({n // workers} users per worker)")
                    logger.warning("roombench: %s", note)
                    _State.notices.append(note)
                    user_count = n
        return start(user_count, spawn_rate, *args, **kwargs)

    runner.start = rounded_start


def _refuse_mid_run_edits(environment: Environment, runner: Any) -> None:
    if runner.state not in ("running", "spawning") or not _State.run_scenario:
        return
    try:
        now = _scenario_and_profile(environment)[0].to_dict()
    except RoombenchError:
        return
    changed = [f"{k} {_State.run_scenario.get(k)!r} -> {v!r}" for k, v in now.items()
               if k != "token" and _State.run_scenario.get(k) != v]
    if changed:
        note = ("custom parameters changed during the run are NOT applied to it (a run's scenario is fixed); "
                "they apply when the next test starts: " + ", ".join(changed))
        logger.warning("roombench: %s", note)
        _State.notices = [t for t in _State.notices if not t.startswith("custom parameters")] + [note]


def _on_finish_request(environment: Environment, msg: Any, **_: Any) -> None:
    """Worker: the master is stopping; drain, reconcile, and send our report now (Locust's
    own quit path would not wait for it)."""
    gen, _State.gen = _State.gen, None
    if gen is not None:
        assert isinstance(environment.runner, WorkerRunner)
        environment.runner.send_message("roombench_report", _finish(environment, gen))


def _collect_reports(runner: MasterRunner, timeout: float) -> None:
    """Master: ask every worker for its report and wait until every live one is in."""
    runner.send_message("roombench_finish", None)
    deadline = time.monotonic() + timeout

    def waiting() -> set[str]:  # a worker that went missing is not waited for
        return {w.id for w in runner.clients.values() if w.state != STATE_MISSING} - set(_State.reports)

    while waiting() and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if waiting():
        logger.error("roombench: workers %s did not report within %.0f s; the summary covers the others",
                     ", ".join(sorted(waiting())), timeout)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _State.env = environment
    _State.test_no += 1
    _State.final, _State.summary_file = None, ""
    _State.reset_at, _State.saturation_logged = 0.0, False
    _State.live_intervals, _State.live_until = {}, float("-inf")
    _State.notices = [t for t in _State.notices if t.startswith("users rounded")]
    _State.live_cache = (0.0, None)
    try:
        _State.run_scenario = _scenario_and_profile(environment)[0].to_dict()
    except RoombenchError:
        _State.run_scenario = {}
    if not isinstance(environment.runner, WorkerRunner):
        if _State.live_loop is not None:
            _State.live_loop.kill(block=False)
        _State.live_loop = gevent.spawn(_live_loop, environment)
    if isinstance(environment.runner, MasterRunner):
        _State.reports, _State.live_reports = {}, {}
        _State.run_workers = {w.id for w in environment.runner.clients.values() if w.state != STATE_MISSING}
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
    if _State.live_loop is not None:
        _State.live_loop.kill(block=False)
        _State.live_loop = None
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
        _write_summary(environment, {"local": report})


def _finish(environment: Environment, gen: Generator) -> dict[str, Any]:
    gen.finish()
    if _State.bridge_loop is not None and _State.bridge is not None:
        _State.bridge_loop.kill()
        _flush_stats(environment, gen, _State.bridge)
    return _as_json(gen, _report(gen))


def _write_summary(environment: Environment, reports: dict[str, dict[str, Any]]) -> None:
    """The test's final summary: kept for the UI, written to its own file, lost messages
    counted as failures in Locust's table, saturation warned about."""
    if not reports:
        if _State.live_reports:
            logger.error("roombench: no worker sent a final report; no summary")
        return
    try:
        summary, merged = _merged_summary(environment, reports, final=True)
    except RoombenchError as exc:  # e.g. a worker of another version or run: one line, no summary
        logger.error("roombench: %s", exc)
        return
    lost = summary["delivery"]["lost"]
    if lost:  # Locust's fail ratio and --exit-code-on-error must see them
        log_failures(environment, *STAT_NAMES["fanout"], lost, "lost: not delivered live, nor over REST")
    _warn_saturation(summary["metadata"]["generator"])
    out = getattr(environment.parsed_options, "summary_out", "")
    if out:
        path = Path(out)
        if _State.test_no > 1:  # a second test from the UI must not overwrite the first one's files
            path = path.parent / f"test-{_State.test_no}" / path.name
        summary["metadata"]["locust"]["summary_file"] = _State.summary_file = str(path)
        write_json(path, summary)
        _write_intervals(str(path), merged)
        logger.info("roombench: summary of test %d written to %s", _State.test_no, path)
    _State.final = summary
    csv_prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if csv_prefix:
        _write_text(f"{csv_prefix}_roombench.csv", webui.csv_text(summary))
        # Locust's CSV writer rewrites its files once a second, and not at exit: let it see
        # the last second (and the failures just logged), or --csv would miss them
        gevent.sleep(1.2)


def _write_text(path: str, text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text)
    tmp.replace(p)


def _warn_saturation(gen_meta: dict[str, Any]) -> None:
    if gen_meta["saturated"] and not _State.saturation_logged:
        _State.saturation_logged = True
        logger.warning("roombench: generator SATURATED, latencies are inflated: %s", "; ".join(gen_meta["saturation"]))


def _summary(environment: Environment, reports: dict[str, Any], final: bool) -> dict[str, Any]:
    return _merged_summary(environment, reports, final)[0]


def _merged_summary(environment: Environment, reports: dict[str, Any],
                    final: bool) -> tuple[dict[str, Any], ProcessReport]:
    """summary.json's dict from per-process reports (ProcessReport or its JSON), with what
    the UI needs under ``metadata.locust`` (test number, state, notices, workers, series).
    Live, the series comes from the intervals gathered so far (the reports carry none)."""
    scenario, profile = _scenario_and_profile(environment)
    parsed = {wid: r if isinstance(r, ProcessReport) else ProcessReport.from_json(r) for wid, r in reports.items()}
    merged = ProcessReport.merge(list(parsed.values()))
    series = _series(merged.intervals if final else [iv for _s, iv in sorted(_State.live_intervals.items())])
    summary = build_summary(merged, target=environment.host or "", scenario=_State.run_scenario or scenario.to_dict(),
                            extra={"profile": profile.to_dict()})
    now = time.time()
    dead = []
    if final:
        for wid in sorted((_State.run_workers | set(_State.live_reports)) - set(reports)):
            t, r = _State.live_reports.get(wid, (None, {}))
            c = r.get("ledger", {})
            dead.append({"id": wid, "age_s": round(now - t, 1) if t is not None else None, "users": r.get("users", 0),
                         "sent": c.get("sent", 0), "acked": c.get("acked", 0), "lost": c.get("lost", 0)})
        for w in dead:
            last = (f"its last report, {w['age_s']} s before the end: {w['users']} users, {w['sent']} sent, "
                    f"{w['acked']} acked" if w["age_s"] is not None else "no report received from it")
            logger.error("roombench: worker %s stopped reporting (%s); the summary covers the other workers",
                         w["id"], last)
    room_sizes: Counter[str] = Counter()
    for r in reports.values():
        room_sizes.update(r.get("room_sizes", {}) if isinstance(r, dict) else
                          (_room_sizes(_State.gen) if _State.gen is not None else {}))
    summary["metadata"]["locust"] = {
        "room_sizes": dict(sorted(room_sizes.items(), key=lambda kv: int(kv[0]))),
        "test": _State.test_no, "state": "final" if final else "running", "notices": list(_State.notices),
        "dead_workers": dead, "summary_file": _State.summary_file, "series": series[-3600:],
        "workers": [{"id": wid, "users": r.users, "cpu_pct": round(100.0 * r.cpu_s / max(r.wall_s, 1e-9), 1),
                     "loop_lag_p99_ms": round(r.loop_lag_p99_ms, 3), "saturated": bool(saturation(r))}
                    for wid, r in sorted(parsed.items())] if len(parsed) > 1 or "local" not in parsed else [],
    }
    return summary, merged


def _live_reports() -> dict[str, Any]:
    """The current test's per-process reports as they stand (master: the workers' latest)."""
    if _State.gen is not None:
        report = _live_report(_State.gen)
        _add_live_intervals(report.intervals)
        report.intervals = []
        return {"local": report}
    return {**{wid: r for wid, (_t, r) in _State.live_reports.items()}, **_State.reports}


def live_summary(environment: Environment) -> dict[str, Any] | None:
    """What /roombench/summary serves: the final summary after stop, else the live one
    (rebuilt at most once a second: the UI polls every 2 s, maybe from several tabs)."""
    if _State.final is not None:
        return _State.final
    t, cached = _State.live_cache
    if cached is not None and time.monotonic() - t < 1.0:
        return cached
    reports = _live_reports()
    if not reports:
        return None
    try:
        summary = _summary(environment, reports, final=False)
    except RoombenchError as exc:
        logger.error("roombench: %s", exc)
        return None
    _State.live_cache = (time.monotonic(), summary)
    return summary


def _live_loop(environment: Environment) -> None:
    """Master / local process: warn in the log as soon as the generator is saturated."""
    while True:
        gevent.sleep(LIVE_EVERY)
        reports = _live_reports()
        if not reports or _State.saturation_logged:
            continue
        try:
            merged = ProcessReport.merge([r if isinstance(r, ProcessReport) else ProcessReport.from_json(r)
                                          for r in reports.values()])
        except RoombenchError:
            continue
        reasons = saturation(merged)
        if reasons and merged.wall_s > 2 * LIVE_EVERY:  # not the first second's import/connect burst
            _warn_saturation({"saturated": True, "saturation": reasons})


def _series(intervals: list[Interval]) -> list[dict[str, Any]]:
    """The chart over time: per interval (measure.intervals, merged exactly over the
    workers) ack and fan-out p99 and the rates, from the last Reset on."""
    out = []
    for iv in intervals:
        if iv.start + iv.length <= _State.reset_at or iv.length <= 0:
            continue
        p99 = {m: (round(percentiles(iv.histograms[m], [99.0])[99.0] / 1000.0, 3) if iv.count(m) else None)
               for m in ("ack", "fanout")}
        out.append({"start": iv.start, "length": round(iv.length, 3), "ack_p99_ms": p99["ack"],
                    "fanout_p99_ms": p99["fanout"],
                    "acks_per_s": round(iv.counts.get("acked", 0) / iv.length, 1),
                    "deliveries_per_s": round(iv.counts.get("delivered_live", 0) / iv.length, 1)})
    return out


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    """Locust has written its --html report by now: add roombench's section to it."""
    env = _State.env
    path = getattr(env.parsed_options, "html_file", None) if env is not None else None
    if path and _State.final is not None and Path(path).is_file():
        webui.add_to_html_file(path, _State.final)


def print_options_help() -> None:
    """The options this locustfile adds to Locust's (``python locustfiles/chat.py --help``)."""
    from locust.argument_parser import LocustArgumentParser

    parser = LocustArgumentParser(prog="locust -f locustfiles/chat.py", add_help=False, add_config_file_help=False,
                                  add_env_var_help=False, description="roombench's options, besides Locust's own "
                                  "(`locust --help`); in the web UI under Custom parameters.")
    _add_options(parser)
    parser.print_help()


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
