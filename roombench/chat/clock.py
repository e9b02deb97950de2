"""One greenlet per process runs every user's open-loop schedule.

A greenlet per user that sleeps until its next send costs a hub switch into it and
back for every message (and a timer per sleep). Instead every session's next due time
(send, forced drop or housekeeping) sits in one heap; the clock greenlet wakes at the
earliest, lets each due session do what is due, and goes back to sleep: several sends
per wake-up, no switch per send. The Locust users keep their greenlets (lifecycle,
spawn rate, web UI) but park them: they do not wake up per message.

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

__all__ = ["BATCH", "Due", "SendClock", "one_loop"]

#: due items one session handles per turn before the others get theirs
BATCH = 16

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
        if self._glet is None or self._glet.dead:
            self._glet = gevent.spawn(self._run)
        elif earlier:
            self._wake.set()  # it sleeps until a later time: wake it to recompute

    def _run(self) -> None:
        heap, wake, stopping = self._heap, self._wake, self._stopping
        while heap and not stopping():
            due = heap[0][0]
            wait = due - now()
            if wait > 0:
                wake.clear()
                wake.wait(wait)
                continue
            # popped first: a step may yield (a full send buffer) and add() may push meanwhile
            _, seq, session = heapq.heappop(heap)
            try:
                nxt = session.step()
            except Exception as exc:  # noqa: BLE001 - one session's bug must not stop every other's sends
                self._on_error("send_loop_error", f"{type(exc).__name__}: {exc}")
                nxt = None
            if nxt is not None:
                heapq.heappush(heap, (nxt, seq, session))
        self._glet = None
