"""The report plumbing of a Locust test: this process's reports (counted from the last
Reset), worker -> master messages, the master's merge into summary.json, the interval logs
and CSV beside it, live.json (``--live-out``) and the live summary the web UI polls.

Messages between processes (``runner.send_message``):

==================== ================= =================================================
message              direction         what
==================== ================= =================================================
roombench_progress   worker -> master  every LIVE_EVERY s: report so far (new intervals only)
roombench_live       worker -> master  each closed interval's live.json snapshot
roombench_report     worker -> master  the final report, after its drain
roombench_finish     master -> worker  stop: drain, reconcile, send the final report now
roombench_reset      master -> worker  Locust's Reset: measure from here
==================== ================= =================================================

The lifecycle (``users``) calls in here; the last two messages are handled there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from roombench.chat.ledger import LedgerCounts
from roombench.exceptions import RoombenchError
from roombench.generator import Generator
from roombench.locust import webui
from roombench.locust.live import LiveMaster, attach
from roombench.locust.options import scenario_and_profile
from roombench.locust.state import RunState
from roombench.locust.stats import STAT_NAMES, log_failures
from roombench.measure.intervals import Interval, write_files
from roombench.measure.metrics import percentiles
from roombench.measure.report import ProcessReport
from roombench.measure.summary import build_summary, saturation, write_json

logger = logging.getLogger("roombench")

#: seconds between a worker's live reports to the master (and the UI's chart points)
LIVE_EVERY = 2


# -- this process's reports -------------------------------------------------------------


def ledger_counts(gen: Generator) -> LedgerCounts:
    """The generator's ledger counts since the last Reset."""
    counts = gen.ledger.counts()
    base = RunState.ledger_base
    if base is None:
        return counts
    b = base.to_dict()
    return LedgerCounts.from_dict({k: v - b[k] for k, v in counts.to_dict().items()})


def process_report(gen: Generator) -> ProcessReport:
    """This process's report, counted from the last Reset."""
    report = gen.report()
    report.ledger = ledger_counts(gen)
    report.counters.subtract(RunState.counters_base)
    report.counters = +report.counters  # drop the zeros
    return report


def live_report(gen: Generator) -> ProcessReport:
    """This process's report while it runs, with only the intervals closed since the last
    one (a report of every interval copies them all: ~0.4 s of a blocked loop 10 minutes
    into a run, which would inflate the very latencies it reports)."""
    if gen.finished:
        return process_report(gen)
    log = gen.intervals
    full = log.intervals
    i = len(full)
    while i > 0 and full[i - 1].start > RunState.live_until:
        i -= 1
    log.intervals = full[i:]  # report() copies what the log holds; it does not yield
    try:
        report = process_report(gen)
    finally:
        log.intervals = full
    if report.intervals:
        RunState.live_until = report.intervals[-1].start
    return report


def _room_sizes(gen: Generator) -> dict[str, int]:
    """Rooms by planned size (deterministic, so a distributed run can be compared with one process)."""
    rooms = Counter(room for no in gen.sessions for room in gen.rooms_for(no))
    return {str(size): n for size, n in sorted(Counter(rooms.values()).items())}


def as_json(gen: Generator, report: ProcessReport) -> dict[str, Any]:
    """What a worker ships: the report plus its room sizes (from_json ignores the extra key)."""
    return {**report.to_json(), "room_sizes": _room_sizes(gen)}


def count_from_here(gen: Generator) -> None:
    """Locust's Reset in a generator process: counters and ledger are not cleared but counted
    from here (the interval log takes per-interval deltas of both, which a clear would turn
    negative)."""
    RunState.counters_base = Counter(gen.counters)
    RunState.ledger_base = gen.ledger.counts()


def restart_live() -> None:
    """Locust's Reset where the UI's summary is built: the chart starts anew, no cached summary."""
    RunState.reset_at = time.time()
    RunState.live_intervals = {}
    RunState.live_cache = (0.0, None)
    env = RunState.env
    if env is not None and isinstance(env.runner, MasterRunner):
        RunState.live_reports = {}


# -- worker -> master -----------------------------------------------------------------------


def register_master_messages(runner: MasterRunner) -> None:
    """The master's handlers of what workers send."""
    runner.register_message("roombench_report", _on_worker_report)
    runner.register_message("roombench_live", _on_worker_live)  # live.json (--live-out)
    runner.register_message("roombench_progress", _on_worker_progress)  # the web UI's live summary


def send_progress(runner: WorkerRunner, gen: Generator) -> None:
    """A worker's report so far, for the master's live page (its final summary uses the final reports)."""
    runner.send_message("roombench_progress", as_json(gen, live_report(gen)))


def _on_worker_report(environment: Environment, msg: Any, **_: Any) -> None:
    RunState.reports[msg.node_id] = msg.data


def _on_worker_progress(environment: Environment, msg: Any, **_: Any) -> None:
    if msg.node_id in RunState.reports:  # a late live report must not replace the final one
        return
    data = dict(msg.data)
    try:  # the intervals closed since the worker's last live report: into the chart
        _add_live_intervals([Interval.from_json(d) for d in data.pop("intervals", [])])
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("roombench: broken live report from worker %s: %s", msg.node_id, exc)
        return
    RunState.live_reports[msg.node_id] = (time.time(), data)


def _add_live_intervals(intervals: list[Interval]) -> None:
    for iv in intervals:
        mine = RunState.live_intervals.get(iv.start)
        if mine is None:
            mine = RunState.live_intervals[iv.start] = Interval(iv.start, 0.0)
        mine.add(iv)  # several workers' intervals of the same start: added exactly


def collect_reports(runner: MasterRunner, timeout: float) -> None:
    """Master: ask every worker for its report and wait until every live one is in."""
    runner.send_message("roombench_finish", None)
    deadline = time.monotonic() + timeout

    def waiting() -> set[str]:  # a worker that went missing is not waited for
        return {w.id for w in runner.clients.values() if w.state != STATE_MISSING} - set(RunState.reports)

    while waiting() and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if waiting():
        logger.error("roombench: workers %s did not report within %.0f s; the summary covers the others",
                     ", ".join(sorted(waiting())), timeout)


# -- a test's start and its summary --------------------------------------------------------


def start_test(environment: Environment) -> None:
    """A test starts: no summary, chart or reports of the last one carry over."""
    RunState.final, RunState.summary_file = None, ""
    RunState.reset_at, RunState.saturation_logged = 0.0, False
    RunState.live_intervals, RunState.live_until = {}, float("-inf")
    RunState.live_cache = (0.0, None)
    if not isinstance(environment.runner, WorkerRunner):
        if RunState.live_loop is not None:
            RunState.live_loop.kill(block=False)
        RunState.live_loop = gevent.spawn(_live_loop, environment)
    if isinstance(environment.runner, MasterRunner):
        RunState.reports, RunState.live_reports = {}, {}
        RunState.run_workers = {w.id for w in environment.runner.clients.values() if w.state != STATE_MISSING}
        RunState.live = None


def stop_live_loop() -> None:
    if RunState.live_loop is not None:
        RunState.live_loop.kill(block=False)
        RunState.live_loop = None


def write_summary(environment: Environment, reports: dict[str, dict[str, Any]]) -> None:
    """The test's final summary: kept for the UI, written to its own file, lost messages
    counted as failures in Locust's table, saturation warned about."""
    if not reports:
        if RunState.live_reports:
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
        if RunState.test_no > 1:  # a second test from the UI must not overwrite the first one's files
            path = path.parent / f"test-{RunState.test_no}" / path.name
        summary["metadata"]["locust"]["summary_file"] = RunState.summary_file = str(path)
        write_json(path, summary)
        _write_intervals(str(path), merged)
        logger.info("roombench: summary of test %d written to %s", RunState.test_no, path)
    RunState.final = summary
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
    if gen_meta["saturated"] and not RunState.saturation_logged:
        RunState.saturation_logged = True
        logger.warning("roombench: generator SATURATED, latencies are inflated: %s", "; ".join(gen_meta["saturation"]))


def _merged_summary(environment: Environment, reports: dict[str, Any],
                    final: bool) -> tuple[dict[str, Any], ProcessReport]:
    """summary.json's dict from per-process reports (ProcessReport or its JSON), with what
    the UI needs under ``metadata.locust`` (test number, state, notices, workers, series).
    Live, the series comes from the intervals gathered so far (the reports carry none)."""
    scenario, profile = scenario_and_profile(environment)
    parsed = {wid: r if isinstance(r, ProcessReport) else ProcessReport.from_json(r) for wid, r in reports.items()}
    merged = ProcessReport.merge(list(parsed.values()))
    series = _series(merged.intervals if final else [iv for _s, iv in sorted(RunState.live_intervals.items())])
    summary = build_summary(merged, target=environment.host or "", scenario=RunState.run_scenario or scenario.to_dict(),
                            extra={"profile": profile.to_dict()})
    dead = _dead_workers(reports) if final else []
    room_sizes: Counter[str] = Counter()
    for r in reports.values():
        room_sizes.update(r.get("room_sizes", {}) if isinstance(r, dict) else
                          (_room_sizes(RunState.gen) if RunState.gen is not None else {}))
    summary["metadata"]["locust"] = {
        "room_sizes": dict(sorted(room_sizes.items(), key=lambda kv: int(kv[0]))),
        "test": RunState.test_no, "state": "final" if final else "running", "notices": list(RunState.notices),
        "dead_workers": dead, "summary_file": RunState.summary_file, "series": series[-3600:],
        "workers": [{"id": wid, "users": r.users, "cpu_pct": round(100.0 * r.cpu_s / max(r.wall_s, 1e-9), 1),
                     "loop_lag_p99_ms": round(r.loop_lag_p99_ms, 3), "saturated": bool(saturation(r))}
                    for wid, r in sorted(parsed.items())] if len(parsed) > 1 or "local" not in parsed else [],
    }
    return summary, merged


def _dead_workers(reports: dict[str, Any]) -> list[dict[str, Any]]:
    """The workers of this run that sent no final report, each with its last live report; logged."""
    now = time.time()
    dead = []
    for wid in sorted((RunState.run_workers | set(RunState.live_reports)) - set(reports)):
        t, r = RunState.live_reports.get(wid, (None, {}))
        c = r.get("ledger", {})
        dead.append({"id": wid, "age_s": round(now - t, 1) if t is not None else None, "users": r.get("users", 0),
                     "sent": c.get("sent", 0), "acked": c.get("acked", 0), "lost": c.get("lost", 0)})
    for w in dead:
        last = (f"its last report, {w['age_s']} s before the end: {w['users']} users, {w['sent']} sent, "
                f"{w['acked']} acked" if w["age_s"] is not None else "no report received from it")
        logger.error("roombench: worker %s stopped reporting (%s); the summary covers the other workers",
                     w["id"], last)
    return dead


# -- live: the UI's summary, the saturation warning, live.json, interval logs -------------


def _live_reports() -> dict[str, Any]:
    """The current test's per-process reports as they stand (master: the workers' latest)."""
    if RunState.gen is not None:
        report = live_report(RunState.gen)
        _add_live_intervals(report.intervals)
        report.intervals = []
        return {"local": report}
    return {**{wid: r for wid, (_t, r) in RunState.live_reports.items()}, **RunState.reports}


def live_summary(environment: Environment) -> dict[str, Any] | None:
    """What /roombench/summary serves: the final summary after stop, else the live one
    (rebuilt at most once a second: the UI polls every 2 s, maybe from several tabs)."""
    if RunState.final is not None:
        return RunState.final
    t, cached = RunState.live_cache
    if cached is not None and time.monotonic() - t < 1.0:
        return cached
    reports = _live_reports()
    if not reports:
        return None
    try:
        summary = _merged_summary(environment, reports, final=False)[0]
    except RoombenchError as exc:
        logger.error("roombench: %s", exc)
        return None
    RunState.live_cache = (time.monotonic(), summary)
    return summary


def _live_loop(environment: Environment) -> None:
    """Master / local process: warn in the log as soon as the generator is saturated."""
    while True:
        gevent.sleep(LIVE_EVERY)
        reports = _live_reports()
        if not reports or RunState.saturation_logged:
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
        if iv.start + iv.length <= RunState.reset_at or iv.length <= 0:
            continue
        p99 = {m: (round(percentiles(iv.histograms[m], [99.0])[99.0] / 1000.0, 3) if iv.count(m) else None)
               for m in ("ack", "fanout")}
        out.append({"start": iv.start, "length": round(iv.length, 3), "ack_p99_ms": p99["ack"],
                    "fanout_p99_ms": p99["fanout"],
                    "acks_per_s": round(iv.counts.get("acked", 0) / iv.length, 1),
                    "deliveries_per_s": round(iv.counts.get("delivered_live", 0) / iv.length, 1)})
    return out


def _write_intervals(summary_out: str, merged: ProcessReport) -> None:
    """<metric>.hlog and intervals.json beside summary.json."""
    try:
        write_files(Path(summary_out).parent, merged.interval_s, merged.intervals)
    except OSError as exc:
        logger.error("roombench: cannot write the interval logs: %s", exc)


def attach_live(environment: Environment, gen: Generator) -> None:
    """With --live-out: live.json written here (one process) or each snapshot sent to the master."""
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
    if RunState.live is None:
        RunState.live = LiveMaster(path)
    RunState.live.add(str(msg.node_id), msg.data, max(1, runner.worker_count))
