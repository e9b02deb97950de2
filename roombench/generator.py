"""What one generator process shares between its users for one test run.

The ledger, the histograms, room membership and the typing / read-receipt send times
live here, once per process; sessions reach them through ``session.gen``. At the end
``finish`` stops the senders, drains what is in flight, reconciles what is still
missing over REST, and closes every session; ``report`` is the typed, mergeable result
(:class:`~roombench.measure.report.ProcessReport`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import numpy as np

from roombench.exceptions import BackfillError
from roombench.chat.ledger import Ledger
from roombench.measure.intervals import Interval, IntervalLog, slot
from roombench.measure.metrics import Metrics, add_values, new_histogram, to_micros
from roombench.measure.report import ProcessReport
from roombench.measure.storms import StormTracker
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.chat.backfill import BackfillClient, error_kind as backfill_error_kind
from roombench.chat.clock import SendClock, one_loop
from roombench.chat.rooms import RoomRegistry, rooms_for
from roombench.chat.scenario import Scenario
from roombench.chat.session import ChatSession
from roombench.chat.signals import SentSignals

logger = logging.getLogger("roombench")

#: a run with no delivery progress for this long while every user is whole is drained
QUIET_S = 1.0
#: most seconds the end-of-run reconciliation may take after the drain (a stalling
#: backfill server cannot stretch the run further)
RECONCILE_S = 5.0
#: event-loop lag probe: how late a greenlet that should wake every LAG_INTERVAL_S wakes
LAG_INTERVAL_S = 0.05


class Generator:
    """Per-process state of one run; create a new one for every test start."""

    def __init__(self, host: str, scenario: Scenario, profile: Profile = DEFAULT_PROFILE) -> None:
        # Several comma-separated base URLs (one server spread over processes): users
        # are spread round-robin; any of them serves the REST backfill.
        self.hosts = [h.strip().rstrip("/") for h in host.split(",") if h.strip()]
        self.host = ",".join(self.hosts)
        self.scenario = scenario
        self.profile = profile
        self.ledger = Ledger(opaque_ids=profile.opaque_ids)
        self.metrics = Metrics()
        self.registry = RoomRegistry()
        self.rest = BackfillClient(self.hosts[0], profile, scenario.token or None, on_error=self.error)
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.counters: Counter[str] = Counter()
        # a signal older than an ack may take is as good as lost: its entry goes (counted)
        self.typing_sent = SentSignals(scenario.ack_timeout, self.counters, "typing_expired")
        self.read_sent = SentSignals(scenario.ack_timeout, self.counters, "read_receipts_expired")
        self.sessions: dict[int, ChatSession] = {}
        self.storms = StormTracker(lambda: len(self.sessions))  # reconnect storms (measure/storms.py)
        self.stopping = False
        self.finished = False
        #: every session's send schedule in one greenlet (chat/clock.py)
        self.clock: SendClock | None = SendClock(lambda: self.stopping, self.error) if one_loop() else None
        self._next_user = 0
        self.started = time.time()
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self._t1: float | None = None
        self._cpu1: float | None = None
        # Import the transports now, not when the first user spawns: a 0.1-0.3 s import
        # in mid-spawn stalls every greenlet (and the lag probe would rightly say so).
        from roombench.transport import registry  # noqa: F401

        # Everything alive now (Locust, gevent, numpy...) lives for the whole run: keep the
        # collector from re-scanning it, or full collections pause the loop for ~60 ms.
        gc.collect()
        gc.freeze()

        self._lag: list[float] = []
        gevent.spawn(self._probe_lag)
        self._init_intervals()
        if scenario.warmup > 0:
            gevent.spawn_later(scenario.warmup, self._end_warmup)

    def _probe_lag(self) -> None:
        """Sample event-loop lag: a busy generator wakes its greenlets late, and every
        latency it measures is then inflated by about that much."""
        clock, lag = time.perf_counter, self._lag
        while not self.stopping:
            t = clock()
            gevent.sleep(LAG_INTERVAL_S)
            if not self.stopping:  # Locust's own stop (inspect.stack(), ~50 ms) is not ours
                lag.append(clock() - t - LAG_INTERVAL_S)

    # -- intervals (measure.intervals): per tick, never per sample ---------------------

    def _init_intervals(self) -> None:
        self.intervals = IntervalLog(self.scenario.interval, started=self.started)
        #: called with each closed interval (live progress); from the ticker greenlet
        self.on_interval: list[Callable[[Interval], None]] = []
        self._clock_offset = time.time() - time.perf_counter()  # perf_counter (intended times) -> unix
        self._lag_ticked = 0
        self._intervals_closed = False
        gevent.spawn(self._tick_intervals)

    def _tick_intervals(self) -> None:
        iv = self.intervals.interval_s
        boundary = slot(time.time(), iv) + iv
        while not self._intervals_closed:
            wait = boundary - time.time()
            if wait > 0:  # a timer may fire a hair early: never tick a boundary twice
                gevent.sleep(wait)
                continue
            closed = self.tick_interval(boundary)
            # a loop blocked past the next boundary skips ahead (that interval then runs long)
            boundary = max(boundary + iv, slot(time.time(), iv) + iv)
            for fn in self.on_interval:
                try:
                    fn(closed)
                except Exception as exc:  # live output must never stop the measurement
                    self.error("interval_callback_error", f"{type(exc).__name__}: {exc}")

    def tick_interval(self, now: float) -> Interval:
        """Close the interval ending at ``now`` (unix s); see IntervalLog.tick."""
        lag = new_histogram()
        add_values(lag, to_micros(np.array(self._lag[self._lag_ticked:], dtype=np.float64)))
        self._lag_ticked = len(self._lag)
        counts = {**self.ledger.counts().to_dict(), **self.counters}
        return self.intervals.tick(now, self.metrics, counts, {"loop_lag": lag})

    def _close_intervals(self) -> None:
        """Final tick (after the reconcile), then each lost pair to its send's interval."""
        if self._intervals_closed:
            return
        self._intervals_closed = True
        self.tick_interval(time.time())
        off = self._clock_offset
        self.intervals.assign_lost((t + off, n) for t, n in self.ledger.pending_by_time())

    def _end_warmup(self) -> None:
        if not self.finished:
            self.metrics.reset()
            self._lag.clear()
            self._lag_ticked = 0
            self.intervals.drop_histograms()
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def rooms_for(self, user_no: int) -> list[str]:
        """The rooms of user number ``user_no`` (unique to this process and run)."""
        sc = self.scenario
        return rooms_for(user_no, sc.room_size, sc.rooms_per_user, self.ledger.prefix)

    def new_session(self) -> ChatSession:
        """A session for the next user number."""
        no, self._next_user = self._next_user, self._next_user + 1
        session = self.sessions[no] = ChatSession(self, no)
        return session

    # storm hooks (chat.context.SessionContext): see measure/storms.py
    def note_drop(self, user_no: int, t: float) -> None:
        self.storms.note_drop(user_no, t)

    def note_rejoined(self, user_no: int, t: float) -> None:
        self.storms.note_rejoined(user_no, t)

    def note_whole(self, user_no: int, t: float) -> None:
        self.storms.note_whole(user_no, t)

    def note_backfill(self, requests: int, items: int) -> None:
        self.storms.note_backfill(requests, items)

    def error(self, kind: str, detail: str) -> None:
        """Count an error; log only the first of each kind (no log storms at 50k/s)."""
        self.errors[kind] += 1
        if kind not in self.error_samples:
            self.error_samples[kind] = detail
            logger.warning("%s: %s (further ones are counted, not logged)", kind, detail)

    # -- end of run ------------------------------------------------------------------

    def finish(self) -> None:
        """Stop sending, drain in-flight messages, reconcile over REST, close sessions."""
        if self.finished:
            return
        self.finished = True
        self.stopping = True
        self._t1, self._cpu1 = time.perf_counter(), time.process_time()
        drain_end = time.monotonic() + self.scenario.drain
        self.rest.end_by(drain_end)  # a rejoin's backfill ends with the drain
        self._drain(self.scenario.drain)
        # the reconciliation: what the drain left, within RECONCILE_S of the drain's end at most
        deadline = min(time.monotonic() + max(RECONCILE_S, self.scenario.drain), drain_end + RECONCILE_S)
        self.rest.end_by(deadline)
        self._reconcile(deadline=deadline)
        pool = gevent.pool.Pool(50)
        for session in list(self.sessions.values()):
            pool.spawn(session.close)
        pool.join(timeout=10)
        self.rest.close()

    def _drain(self, limit: float) -> None:
        """Wait until nothing is in flight, or nothing moved for QUIET_S with every user
        whole (a lossy server never drains), or ``limit`` seconds passed."""
        deadline = time.monotonic() + limit
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            left = self.ledger.outstanding()
            if left == 0:
                return
            t = time.monotonic()
            if left != last or not all(s.whole for s in self.sessions.values()):
                last, quiet_since = left, t
            elif t - quiet_since >= QUIET_S:
                return
            gevent.sleep(0.05)

    def _reconcile(self, deadline: float) -> None:
        """Fetch over REST what receivers still miss: one fetch per room from the
        smallest id that covers every receiver's missing messages."""
        by_room: dict[str, tuple[int, list[int]]] = {}
        for (receiver, room), after in self.ledger.missing().items():
            lo, receivers = by_room.get(room, (after, []))
            by_room[room] = (min(lo, after), receivers + [receiver])
        # sends whose ack died with their connection and whose rejoin backfill did not
        # settle them (it failed, or never ran): the covering fetch of their room does
        unsettled = {t: s for s in self.sessions.values() for t in s.disconnected_sends}
        covered = {t: room for t in unsettled if (room := self.ledger.waited_for_in(t)) is not None}
        f_temp, f_id = self.profile.field("temp_id"), self.profile.field("id")
        fetched: set[str] = set()
        for room, (after, receivers) in by_room.items():
            try:
                items = self.rest.after(room, after, deadline)
            except BackfillError as exc:
                self.error(backfill_error_kind(exc), str(exc))
                continue
            fetched.add(room)
            for m in items:
                temp_id = m.get(f_temp)
                if isinstance(temp_id, str):
                    owner = unsettled.pop(temp_id, None)
                    if owner is not None:  # it reached the server: the ack we never got
                        del owner.disconnected_sends[temp_id]
                        self.ledger.on_acked(temp_id, m.get(f_id), heard=False)
                    for receiver in receivers:
                        self.ledger.on_backfill(receiver, temp_id, m.get(f_id))
        for temp_id, owner in unsettled.items():
            if covered.get(temp_id) in fetched:  # a fetch that covered it did not list it: never sent
                del owner.disconnected_sends[temp_id]
                self.ledger.void(temp_id)

    # -- results ---------------------------------------------------------------------

    def report(self) -> ProcessReport:
        """This process's result (workers ship its ``to_json()``; see ProcessReport.merge)."""
        if self.finished:
            self._close_intervals()
        t1 = self._t1 if self._t1 is not None else time.perf_counter()
        cpu1 = self._cpu1 if self._cpu1 is not None else time.process_time()
        lag = new_histogram()
        add_values(lag, to_micros(np.array(self._lag, dtype=np.float64)))
        metrics = Metrics()
        metrics.merge(self.metrics)  # a copy: the report must not change as this process goes on
        return ProcessReport(
            target=self.host, scenario=self.scenario.to_dict(), profile=self.profile.to_dict(), metrics=metrics,
            loop_lag=lag, ledger=self.ledger.counts(), errors=Counter(self.errors),
            error_samples=dict(self.error_samples), counters=Counter(self.counters), users=len(self.sessions),
            started=self.started, wall_s=t1 - self._t0, cpu_s=cpu1 - self._cpu0, storms=self.storms.to_json(),
            interval_s=self.intervals.interval_s, intervals=[_copy(iv) for iv in self.intervals.intervals])

    def reset_measurements(self) -> None:
        """Measure from now on (Locust's Reset): histograms, loop lag, the intervals' histograms,
        wall and CPU time, the start time and errors restart. Messages in flight stay in the
        ledger, and ledger and counters are not cleared (the interval log takes deltas of them)."""
        self.metrics.reset()
        self._lag.clear()
        self._lag_ticked = 0
        self.intervals.drop_histograms()
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self.started = time.time()
        self.errors.clear()


def _copy(iv: Interval) -> Interval:
    """An interval the report owns (the log's last one may still grow)."""
    out = Interval(iv.start, 0.0)
    out.add(iv)
    return out


def run_report(gen: Generator, users: int, duration: float, spawn_rate: float = 100.0) -> ProcessReport:
    """Connect ``users`` sessions, then run them ``duration`` seconds without Locust, finish, report.

    For tests, probes and benchmarks that need the generator but not Locust's runner.
    Call from a gevent-patched process.
    """
    sessions = []
    for _ in range(users):  # connect and join everyone first: the load starts complete
        sessions.append(gen.new_session())
        gevent.spawn(sessions[-1].start)
        gevent.sleep(1.0 / spawn_rate)
    gevent.joinall([gevent.spawn(s.joined.wait, gen.scenario.ack_timeout) for s in sessions])
    greenlets = [gevent.spawn(s.run) for s in sessions]
    gevent.sleep(duration)
    gen.finish()
    gevent.killall(greenlets, timeout=5)
    return gen.report()


def run_for(gen: Generator, users: int, duration: float, spawn_rate: float = 100.0) -> dict[str, Any]:
    """:func:`run_report`, as the JSON form a worker ships (plain dicts: ``["ledger"]["sent"]``)."""
    return run_report(gen, users, duration, spawn_rate).to_json()
