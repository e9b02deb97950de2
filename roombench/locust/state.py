"""What this Locust process knows of its current test: one class, shared by the lifecycle
(``users``: the generator, the stats bridge, the UI's notices) and the report plumbing
(``reports``: reports since the last Reset, the workers', the final summary, live data).

Locust may run several tests in one process (the web UI's start / stop), so every field
is reset where its test starts, never at import.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import gevent
from locust.env import Environment

from roombench.chat.ledger import LedgerCounts
from roombench.generator import Generator
from roombench.locust.live import LiveMaster
from roombench.locust.stats import LocustBridge
from roombench.measure.intervals import Interval


class RunState:
    """This process's current run (class attributes: one per process)."""

    env: Environment | None = None
    #: tests started in this process (a summary file per test; the UI says which test)
    test_no = 0
    #: the scenario the current test runs (the master has no generator to ask)
    run_scenario: dict[str, Any] = {}
    #: what the UI shows above the numbers: refused edits, rounded user counts...
    notices: list[str] = []

    # -- lifecycle (users) ------------------------------------------------------------------
    gen: Generator | None = None
    bridge: LocustBridge | None = None
    bridge_loop: gevent.Greenlet | None = None
    failures_logged = 0
    connect_failures_logged = 0

    # -- reports ------------------------------------------------------------------------------
    #: master only: the workers' final reports of the current run, by worker id
    reports: dict[str, dict[str, Any]] = {}
    #: master only: each worker's latest live report of this run, (time received, report)
    live_reports: dict[str, tuple[float, dict[str, Any]]] = {}
    #: master only: the workers connected when the test started (one that never reports is dead)
    run_workers: set[str] = set()
    #: this process's ledger counts at the last Reset (subtracted from what it reports)
    ledger_base: LedgerCounts | None = None
    counters_base: Counter[str] = Counter()
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
    #: master only, with --live-out: the workers' live.json snapshots
    live: LiveMaster | None = None
