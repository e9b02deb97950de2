"""Pending acks and the one process-wide sweeper that expires them.

Every transport keeps its pending acks in an :class:`AckTable` (one callback per ack id,
called exactly once) and registers it (and a ping check) with :data:`SWEEPER`, so ack
deadlines and ping timeouts of all connections in the process cost one greenlet, not a
timer per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import compress
from operator import attrgetter
from typing import Any

import gevent

from roombench.transport.base import AckCallback

__all__ = ["AckTable", "PING_CHECK_INTERVAL", "SWEEPER", "SWEEP_INTERVAL"]

#: seconds between two sweeps of ack deadlines
SWEEP_INTERVAL = 0.25
#: seconds between two checks of every connection's ping deadline (a server allows
#: pingInterval + pingTimeout, 45 s by default: a second's resolution is plenty)
PING_CHECK_INTERVAL = 1.0
_PENDING = attrgetter("pending")
_now = time.monotonic
#: timed-out ack ids remembered to tell a late answer from an unknown one
_TIMED_OUT_MAX = 65536


#: a pending ack: (callback, deadline, the arg it is called with)
Entry = tuple[AckCallback, float, Any]


class AckTable:
    """Pending acks, id -> :data:`Entry`; every callback is called exactly once.

    ``on_error(kind, detail)`` hears about a callback that raised while being failed
    (timeout or disconnect), so one buggy callback cannot keep the others from running.
    The transports inline :meth:`add` and :meth:`resolve` on their hot paths: they touch
    ``pending`` and ``next_id`` directly, so those two stay plain public attributes.
    """

    __slots__ = ("pending", "next_id", "timeout", "on_error", "timed_out")

    def __init__(self, timeout: float, on_error: Callable[[str, str], None]) -> None:
        self.pending: dict[int, Entry] = {}
        self.next_id = 0
        self.timeout = timeout
        self.on_error = on_error
        # ids failed by timeout and not answered since: an answer to one is "late"; any
        # other answer that resolves nothing is "unknown". Bounded: oldest forgotten first.
        self.timed_out: dict[int, None] | None = None  # created by the first timeout (memory per idle connection)

    def add(self, callback: AckCallback, arg: Any = None) -> int:
        """Register ``callback`` (called with ``arg``) under a new ack id; its deadline is now + timeout."""
        aid = self.next_id
        self.next_id = aid + 1
        self.pending[aid] = (callback, _now() + self.timeout, arg)
        return aid

    def resolve(self, aid: int, payload: Any) -> bool:
        """Call the callback of ``aid`` with ``payload``; False when the ack is late.

        Late means: already failed, or past its deadline (then it fails with "timeout"
        now, so the timeout is exact whatever the sweep interval).
        """
        entry = self.pending.pop(aid, None)
        if entry is None:
            return False
        if entry[1] < _now():
            self._time_out(aid, entry)
            return False
        entry[0](entry[2], payload, None)
        return True

    def send_failed(self, aid: int) -> bool:
        """The send of ``aid`` failed: take it back; what emit returns. False: its callback
        will never be called. True: it already was (the ack timed out or failed while the
        send waited for buffer space), so to the caller the message went out, its fate told."""
        return self.pending.pop(aid, None) is None

    def answer(self, aid: int, payload: Any) -> None:
        """:meth:`resolve`, and an answer that resolved nothing reported (see :meth:`miss`)."""
        entry = self.pending.pop(aid, None)
        if entry is not None and entry[1] >= _now():
            entry[0](entry[2], payload, None)
        else:
            self.miss(aid, entry)

    def miss(self, aid: int, entry: Entry | None) -> None:
        """An answer to ``aid`` that resolved nothing; ``entry`` is what ``pending.pop``
        gave (the transports' inlined resolve hands it over). One counted error:
        ``late_ack`` when the ack was issued and timed out, else ``unknown_ack``."""
        if entry is not None:  # past its deadline, not swept yet: it times out now
            self._time_out(aid, entry)
        if self.timed_out is not None and self.timed_out.pop(aid, 0) is None:
            self.on_error("late_ack", f"ack {aid} arrived after its timeout")
        else:
            self.on_error("unknown_ack", f"ack {aid} answers no pending message (never issued, or answered already)")

    def _time_out(self, aid: int, entry: Entry) -> None:
        timed_out = self.timed_out
        if timed_out is None:
            timed_out = self.timed_out = {}
        timed_out[aid] = None
        if len(timed_out) > _TIMED_OUT_MAX:
            del timed_out[next(iter(timed_out))]
        self.fail(entry, "timeout")

    def expire(self, now: float) -> None:
        """Fail every ack whose deadline has passed with "timeout"."""
        pending = self.pending
        # deadlines grow with ids and dicts keep insertion order: stop at the first live one
        while pending:
            aid = next(iter(pending))
            if pending[aid][1] > now:
                return
            self._time_out(aid, pending.pop(aid))

    def fail_all(self, error: str) -> None:
        """Fail every pending ack with ``error``."""
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            self.fail(entry, error)

    def fail(self, entry: Entry, error: str) -> None:
        """Call ``entry``'s callback with ``error``; a raising callback is reported, not raised."""
        try:
            entry[0](entry[2], None, error)
        except Exception as exc:  # noqa: BLE001 - report it, then fail the next one
            self.on_error("handler_error", f"ack callback ({error}): {type(exc).__name__}: {exc}")


class _Sweeper:
    """One greenlet per process: every ``SWEEP_INTERVAL`` the registered ack tables that
    have pending acks expire their late ones, and every ``PING_CHECK_INTERVAL`` each
    registered check runs (the connections' ping deadlines).

    The tables with pending acks are found in C (``compress`` over ``attrgetter``): a
    Python call per transport per sweep was ~3/4 of an idle generator's CPU (19,800
    idle connections, four sweeps a second), where at any moment most tables are empty.
    It exists only while something is registered, so a process with no open transports
    has no sweeper greenlet.
    """

    def __init__(self) -> None:
        self._tables: dict[int, AckTable] = {}
        self._checks: dict[int, Callable[[float], None]] = {}
        self._glet: gevent.Greenlet | None = None

    def add(self, key: object, table: AckTable, check: Callable[[float], None] | None = None) -> None:
        """Expire ``table``'s late acks, and run ``check(now)``, until ``discard(key)``."""
        self._tables[id(key)] = table
        if check is not None:
            self._checks[id(key)] = check
        if self._glet is None or self._glet.dead:
            self._glet = gevent.spawn(self._run)

    def discard(self, key: object) -> None:
        """Stop sweeping for ``key``; the last one out ends the greenlet."""
        self._tables.pop(id(key), None)
        self._checks.pop(id(key), None)
        glet = self._glet
        if not self._tables and glet is not None and glet is not gevent.getcurrent():
            self._glet = None
            glet.kill(block=False)

    def _run(self) -> None:
        next_check = _now() + PING_CHECK_INTERVAL
        while self._tables:
            gevent.sleep(SWEEP_INTERVAL)
            now = _now()
            tables = list(self._tables.values())
            for table in compress(tables, map(_PENDING, tables)):
                try:
                    table.expire(now)  # a raising callback is reported by the table
                except Exception:  # noqa: BLE001, S110 - nor may its error channel stop the sweeps
                    pass
            if now >= next_check:
                next_check = now + PING_CHECK_INTERVAL
                for check in list(self._checks.values()):
                    try:
                        check(now)
                    except Exception:  # noqa: BLE001, S110 - a check's bug must not stop the sweeps
                        pass


#: the process's sweeper: transports register their ack table (and ping check) on connect
SWEEPER = _Sweeper()
