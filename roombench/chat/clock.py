"""One loop per process runs every user's open-loop schedule.

A greenlet per user that sleeps until its next send costs a timer and a hub switch
into it and back for every message. Instead every session's next due time (send,
forced drop or housekeeping) sits in one heap, and the process's connection poller
(:data:`~roombench.transport.poller.POLLER`) runs what is due between its batches of
reads: under load a due send goes out on a wake-up the incoming acks caused anyway, with
no timer and no switch; the poller parks on "readable or next due", so an idle process
still sends on time. While no poller runs (every connection down, the compat transport,
``ROOMBENCH_READER=greenlet``) the clock's own greenlet sleeps until each due time.
The Locust users keep their greenlets (lifecycle, spawn rate, web UI) but park them:
they do not wake up per message.

Latency stays honest: a session sends each message with its *intended* time as the
latency origin, however late the clock wakes; a late clock is the generator's lag, which
:class:`~roombench.generator.Generator` probes and flags. Fairness: a session that fell
behind sends at most ``BATCH`` messages per turn, then queues behind the others by its
next due time, so one user's backlog cannot hold every other user's sends.

``ROOMBENCH_SENDER=greenlet`` runs each user's schedule in its own greenlet, as before
this module (for A/B measurements).
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable
from typing import Protocol

import gevent
import gevent.event

from roombench.transport.poller import POLLER

__all__ = ["BATCH", "Due", "SendClock", "one_loop"]

#: due items one session handles per turn before the others get theirs
BATCH = 16
#: sessions served per run_due call: the poller's reads get their turn in between
TURNS = 64
#: while the poller drives, the clock's own greenlet only checks this often that it still does
WATCH_S = 0.05
_INF = float("inf")

now = time.perf_counter


def one_loop() -> bool:
    """False when ``ROOMBENCH_SENDER=greenlet`` asks for a greenlet per user."""
    return os.environ.get("ROOMBENCH_SENDER", "clock") != "greenlet"


class Due(Protocol):
    """A session as the clock sees it."""

    def step(self) -> float | None:
        """Do what is due now (at most BATCH items); the next due time, or None: done."""
        ...


class SendClock:
    """The process's send loop (see the module docstring); ``stopping()`` ends it."""

    def __init__(self, stopping: Callable[[], bool], on_error: Callable[[str, str], None]) -> None:
        self._stopping = stopping
        self._on_error = on_error
        self._heap: list[tuple[float, int, Due]] = []
        self._seq = itertools.count()  # ties keep insertion order; sessions are never compared
        self._wake = gevent.event.Event()
        self._glet: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, session: Due, due: float) -> None:
        """Run ``session.step()`` from ``due`` on (perf_counter seconds)."""
        heap = self._heap
        earlier = not heap or due < heap[0][0]
        heapq.heappush(heap, (due, next(self._seq), session))
        if POLLER.timers is not self:
            POLLER.timers = self  # a new run's clock replaces the last one's
        if self._glet is None or self._glet.dead:
            self._glet = gevent.spawn(self._run)
        elif earlier:
            self._wake.set()  # it may sleep until a later time: wake it to recompute
        if earlier:  # a parked poller waits for reads or a later time (or none: a new clock)
            POLLER.kick()

    def next_due(self) -> float:
        """The earliest due time; inf when nothing is left. The poller asks this on every
        wake-up, so it only reads the heap (a stopped run is emptied by run_due)."""
        return self._heap[0][0] if self._heap else _INF

    def run_due(self) -> None:
        """Let the sessions that are due take their turns (at most TURNS of them)."""
        heap, pop, push = self._heap, heapq.heappop, heapq.heappush
        if self._stopping():  # the run is over: nothing is due any more
            heap.clear()
            return
        t = now()
        for _ in range(TURNS):
            if not heap or heap[0][0] > t:
                return
            # popped first: a step may yield (a full send buffer) and add() may push meanwhile
            _, seq, session = pop(heap)
            try:
                nxt = session.step()
            except Exception as exc:  # noqa: BLE001 - one session's bug must not stop every other's sends
                self._on_error("send_loop_error", f"{type(exc).__name__}: {exc}")
                nxt = None
            if nxt is not None:
                push(heap, (nxt, seq, session))

    def _run(self) -> None:
        """The fallback driver: precise while no poller runs, a slow watch while one does."""
        heap, wake = self._heap, self._wake
        while heap and not self._stopping():
            if POLLER.timers is self and POLLER.running:
                wake.clear()
                wake.wait(WATCH_S)
                continue
            wait = heap[0][0] - now()
            if wait > 0:
                wake.clear()
                wake.wait(wait)
                continue
            self.run_due()
        self._glet = None
