"""The delivery ledger: who should get which message, and what actually arrived.

Pure bookkeeping — no I/O, no gevent, no clock. One :class:`Ledger` per generator process;
every member of a room lives in that process, so the ledger alone knows the full set of
expected (receiver, message) pairs. Users are small ints, messages are matched by the
``temp_id`` the generator chose, so any server id scheme works.

Accounting (every counter is a count of events, see :class:`LedgerCounts`)::

    expected       = sum over sent messages of |members at send time - {sender}|
    delivered_live = expected pairs that arrived as a live new_message (first time)
    live_missed    = expected - delivered_live
    recovered      = missed pairs that a REST backfill returned or a Socket.IO recovery
                     replayed (recovered_replay + recovered_backfill)
    lost           = live_missed - recovered      (never got it at all)

A send that never reached the server (it left as the connection dropped, and a full
backfill of its room does not hold it) is voided: its ack counts as ``voided`` and its
still-pending receivers are withdrawn from ``expected`` — not the server's loss.

Own copies: the ledger knows which session sent each temp_id (:meth:`sender_of`), so a
session recognises its own echo by temp_id alone, whatever user id the server gave it and
whichever of ack and echo came first; an own copy is never a delivery nor unexpected.
:meth:`on_copy` is :meth:`sender_of` and :meth:`on_live` in one lookup (the receive path's
call: it returns :data:`OWN` for the sender's own copy). An own copy that comes before the
ack notes the server's id: :meth:`server_has` then says the server had the message, should
its ack die with the connection.

Ids: with ``opaque_ids`` a message id is any JSON string or number and is never compared
by value; the room high-water mark is the id noted last, ranked by the order ids were
learned (acks and backfills come in the server's order).

Order with opaque ids is judged against the server's order, never by value: see
:mod:`roombench.chat.order` (each record carries its :data:`~roombench.chat.order.Mark`).

Server restarts: :meth:`server_reset` counts one restart per outage (a reset observed by a
member whose drop began after the previous reset was first observed is a new one) and
re-bases the room: its high-water mark and every in-flight record's covering ``after`` go
back to the start, since the restarted server numbers from there again.

Memory stays bounded by what is in flight: a record is retired the moment its ack is
settled (acked or failed) and no receiver is pending. A short, bounded memory of retired
records keeps classifying stragglers (a late joiner's copy is "unexpected", a second copy
is a "duplicate") after retirement. A retired message is kept as one int (its sender and
which member set it was sent to, see :class:`_Retired`), not its record: tens of
thousands of lists alive for a while are what the cyclic collector re-scans, and they
made its full collections 20-60 ms pauses every few seconds at 17k acks/s.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from roombench.chat.order import SenderOrder, new_mark

#: :meth:`Ledger.on_copy`'s answer for the sender's own copy (compare with ``is``)
OWN = float("-inf")
#: Retired records kept per generation for classifying stragglers (two generations live).
RETIRED_WINDOW = 16_384


@dataclass
class LedgerCounts:
    """Delivery counters of one or more ledgers; ``a + b`` merges two processes' counts.

    ``live_missed`` and ``lost`` are derived (see the module docstring) but stored so the
    dict form is self-describing; they stay consistent under ``+``.
    """

    sent: int = 0
    acked: int = 0
    ack_timeouts: int = 0
    ack_errors: int = 0
    expected: int = 0
    delivered_live: int = 0
    live_missed: int = 0
    recovered: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    voided: int = 0
    #: connection state recovery: ``recovered`` split by how (replay + backfill = recovered)
    recovered_replay: int = 0
    recovered_backfill: int = 0
    #: backfilled messages the replay had already brought (deduped by the merge; not in duplicates)
    replay_backfill_overlap: int = 0

    def __add__(self, other: LedgerCounts) -> LedgerCounts:
        if not isinstance(other, LedgerCounts):
            return NotImplemented
        return LedgerCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def merge(self, other: LedgerCounts) -> LedgerCounts:
        """Return the sum of both counts (same as ``self + other``)."""
        return self + other

    @classmethod
    def sum(cls, counts: Iterable[LedgerCounts]) -> LedgerCounts:
        """Merge any number of counts (e.g. one per worker)."""
        total = cls()
        for c in counts:
            total = total + c
        return total

    def to_dict(self) -> dict[str, int]:
        """Plain dict for JSON (summary files, worker → master messages)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerCounts:
        """Inverse of :meth:`to_dict`; unknown keys (a newer writer) are ignored, missing ones are 0."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


# A record is a plain list, not an object: creating a __slots__ instance through __init__
# costs ~5x a list display, and on_sent runs up to 100k times a second. Field positions:
_ROOM = 0  # room name
_T = 1  # intended send time (latency origin)
_MEMBERS = 2  # members at send time: a shared frozenset, not a copy
_SENDER = 3
_PENDING = 4  # set of receivers still waiting; None once retired
_PREV = 5  # room high-water mark at send time, (rank, id): the id is the "after" for a covering fetch
_SETTLED = 6  # ack arrived or failed
_MSG_ID = 7  # server id once known
_BACKFILLED = 8  # receivers that got it over REST, lazily a set (rare)
_MARK = 9  # opaque ids only, its order mark (chat.order); int records stay 9 long (on_sent is hot)
_Rec = list[Any]  # [room, intended_t, members, sender, pending, prev_id, settled, msg_id, backfilled(, mark)]
_SENDER_BITS = 40  # a retired code: member set index << _SENDER_BITS | sender
#: the pending receivers of a message nobody else is to receive (never modified: every
#: ``remove`` is behind a membership test)
_NOBODY: frozenset[int] = frozenset()


class _Retired:
    """One generation of retired messages: temp_id -> ``index << _SENDER_BITS | sender``,
    ``index`` naming the members frozenset in :attr:`sets` (a room's set is shared by
    every message sent while its membership held). An int is nothing the cyclic collector
    tracks; a message a receiver got over REST keeps its whole record instead (rare: the
    backfilled set tells an overlap from a duplicate)."""

    __slots__ = ("codes", "sets", "index")

    def __init__(self) -> None:
        self.codes: dict[str, int | _Rec] = {}
        self.sets: list[frozenset[int]] = []
        self.index: dict[frozenset[int], int] = {}

    def add(self, temp_id: str, rec: _Rec) -> None:
        if rec[_BACKFILLED]:
            self.codes[temp_id] = rec
            return
        members = rec[_MEMBERS]
        i = self.index.get(members)
        if i is None:
            i = self.index[members] = len(self.sets)
            self.sets.append(members)
        self.codes[temp_id] = i << _SENDER_BITS | rec[_SENDER]

    def sender_members(self, temp_id: str) -> tuple[int, frozenset[int], _Rec | None] | None:
        """(sender, members, the record if it was kept whole), or None if not in this generation."""
        code = self.codes.get(temp_id)
        if code is None:
            return None
        if type(code) is int:
            return code & ((1 << _SENDER_BITS) - 1), self.sets[code >> _SENDER_BITS], None
        return code[_SENDER], code[_MEMBERS], code


class Ledger:
    """Expected-versus-received bookkeeping for one generator process (see module docstring).

    All methods are O(1) except :meth:`missing`, which scans the in-flight records.
    Not thread-safe; under gevent none of the methods yields, so greenlets may share it.
    """

    __slots__ = ("prefix", "_ids", "_records", "_retired", "_retired_old", "_hwm", "_sent", "_acked",
                 "_ack_timeouts", "_ack_errors", "_expected", "_delivered_live", "_recovered",
                 "_duplicates", "_out_of_order", "_unexpected", "_voided", "_retired_window", "_opaque", "_rank",
                 "_start", "_recovered_replay", "_replay_overlap", "_order", "_reset_seen", "_room_reset")

    def __init__(self, prefix: str | None = None, *, retired_window: int = RETIRED_WINDOW,
                 opaque_ids: bool = False) -> None:
        # The prefix makes temp_ids unique across generator processes (a foreign temp_id is
        # recognised as such) without any coordination.
        self.prefix: str = prefix if prefix is not None else f"{os.getpid():x}{random.getrandbits(16):04x}-"
        self._ids = itertools.count(1)
        self._records: dict[str, _Rec] = {}
        # Two generations of retired records: O(1) insert and bounded size, no FIFO popping.
        self._retired = _Retired()
        self._retired_old = _Retired()
        self._retired_window = retired_window
        # room -> (rank, id) of the newest server id seen in this process; the rank is the id
        # itself for int ids, the order ids were learned in for opaque ones
        self._hwm: dict[str, tuple[Any, Any]] = {}
        self._opaque = opaque_ids
        self._rank = 0
        self._start: tuple[Any, Any] = (0, "") if opaque_ids else (0, 0)
        self._sent = self._acked = self._ack_timeouts = self._ack_errors = 0
        self._expected = self._delivered_live = self._recovered = 0
        self._duplicates = self._out_of_order = self._unexpected = self._voided = 0
        self._recovered_replay = self._replay_overlap = 0
        self._order = SenderOrder()  # opaque ids only
        # server restarts: when the last one was first observed, and when each room was re-based
        self._reset_seen: float | None = None
        self._room_reset: dict[str, float] = {}

    # -- sending side -----------------------------------------------------------------------

    def new_temp_id(self) -> str:
        """A temp_id unique to this process: ``f"{prefix}{counter}"``."""
        return f"{self.prefix}{next(self._ids)}"

    def on_sent(self, temp_id: str, room: str, sender: int, members: frozenset[int], intended_t: float) -> None:
        """A message left: every member but the sender is now expected to receive it.

        ``intended_t`` is the scheduled send time (the latency origin), returned later by
        :meth:`on_acked` and :meth:`on_live`.
        """
        if len(members) == 1 and sender in members:  # a room of one: no set of its own
            pending = _NOBODY
        else:
            pending = set(members)
            pending.discard(sender)
        rec = [room, intended_t, members, sender, pending, self._hwm.get(room, self._start), False, None, None]
        if self._opaque:
            rec.append(new_mark())
        self._records[temp_id] = rec
        self._sent += 1
        self._expected += len(pending)

    def on_acked(self, temp_id: str, msg_id: Any, heard: bool = True) -> float | None:
        """The server acked ``temp_id``; returns its intended time, or None if unknown or already settled.

        ``heard=False``: a send whose ack died with its connection, found in a REST fetch: the
        server has it, but the sender's connection never heard of it, so it gets no rank in
        the opaque-id order (ranked now, it would look later than the sends after it)."""
        rec = self._records.get(temp_id)
        if rec is None or rec[_SETTLED]:
            return None
        rec[_SETTLED] = True
        self._acked += 1
        if self._opaque:
            if msg_id is not None:
                self._note_id(rec, msg_id)
            if heard:
                self._order.heard(rec[_MARK])
        elif msg_id is not None:  # _note_id for int ids, inlined: once per ack
            rec[_MSG_ID] = msg_id
            if type(msg_id) is int and msg_id > self._hwm.get(rec[_ROOM], self._start)[0]:
                self._hwm[rec[_ROOM]] = (msg_id, msg_id)
        if not rec[_PENDING]:
            self._retire(temp_id, rec)
        return rec[_T]

    def on_ack_failed(self, temp_id: str, reason: str) -> float | None:
        """The ack never came (``reason == "timeout"``) or was an error; deliveries still count.

        Returns the intended send time of a timed-out message (the caller records the ack
        latency it had reached, so a stall can never make the percentiles look better);
        None otherwise."""
        rec = self._records.get(temp_id)
        if rec is None or rec[_SETTLED]:
            return None
        rec[_SETTLED] = True
        t0: float | None = None
        if reason == "timeout":
            self._ack_timeouts += 1
            t0 = rec[_T]
        else:
            self._ack_errors += 1
        if not rec[_PENDING]:
            self._retire(temp_id, rec)
        return t0

    def void(self, temp_id: str) -> bool:
        """The message never reached the server: settle its ack as voided and withdraw its
        pending receivers from ``expected``. False if ``temp_id`` is not in flight."""
        rec = self._records.get(temp_id)
        if rec is None:
            return False
        self._expected -= len(rec[_PENDING])
        if not rec[_SETTLED]:
            rec[_SETTLED] = True
            self._voided += 1
        self._retire(temp_id, rec)
        return True

    # -- receiving side ---------------------------------------------------------------------

    def server_has(self, temp_id: str) -> bool:
        """True when a copy of in-flight ``temp_id`` told its server id (the sender's own
        copy, a delivery, a backfill): the server has it, whatever became of its ack."""
        rec = self._records.get(temp_id)
        return rec is not None and rec[_MSG_ID] is not None

    def waited_for_in(self, temp_id: Any) -> str | None:
        """The room of an in-flight ``temp_id`` some receiver still waits for, else None:
        a covering fetch of that room (:meth:`missing`) lists it if the server has it."""
        rec = self._records.get(temp_id)
        return rec[_ROOM] if rec is not None and rec[_PENDING] else None

    def sender_of(self, temp_id: Any) -> int | None:
        """The user number that sent ``temp_id`` (in flight or recently retired), else None."""
        rec = self._records.get(temp_id)
        if rec is not None:
            return rec[_SENDER]  # type: ignore[no-any-return]
        old = self._find_retired(temp_id)
        return None if old is None else old[0]

    def on_copy(self, receiver: int, temp_id: str, msg_id: Any) -> float | None:
        """A live new_message reached ``receiver``, who may be its sender: :data:`OWN` (nothing
        counted) when ``receiver`` sent it (in flight or recently retired), else as :meth:`on_live`.
        One record lookup for both questions: this runs once per delivery."""
        rec = self._records.get(temp_id)
        if rec is None:
            old = self._find_retired(temp_id)
            if old is not None and old[0] == receiver:
                return OWN
            self._extra_copy(receiver, temp_id, old)
            return None
        if rec[_SENDER] == receiver:
            if not rec[_SETTLED]:  # before its ack: the server has it (server_has)
                if not self._opaque:
                    rec[_MSG_ID] = msg_id  # the room's high-water mark follows with the ack
                else:
                    if rec[_MSG_ID] is None:  # ranked as first learned, as from a delivery
                        self._note_id(rec, msg_id)
                    self._order.heard(rec[_MARK])
            return OWN
        return self._delivered(rec, receiver, temp_id, msg_id)

    def on_live(self, receiver: int, temp_id: str, msg_id: Any) -> float | None:
        """A live new_message reached ``receiver`` (never the sender's own echo).

        Returns the intended send time on a first, expected delivery (the caller records
        fan-out latency ``now - intended_t``); None for duplicates and unexpected copies.
        """
        rec = self._records.get(temp_id)
        if rec is not None:
            return self._delivered(rec, receiver, temp_id, msg_id)
        self._extra_copy(receiver, temp_id, self._find_retired(temp_id))
        return None

    def _extra_copy(self, receiver: int, temp_id: str, old: tuple[int, frozenset[int], _Rec | None] | None) -> None:
        """A live copy of a message not in flight (``old``: what the retired memory holds of
        it, if anything): a duplicate or unexpected, never a delivery."""
        if old is not None:
            sender, members, whole = old
            if whole is not None:
                self._classify_extra(whole, receiver)
            elif receiver == sender or receiver not in members:
                self._unexpected += 1
            else:
                self._duplicates += 1
        elif temp_id.startswith(self.prefix):
            # ours, retired so long ago it left the window: it was fully delivered before
            self._duplicates += 1
        else:
            self._unexpected += 1

    def _delivered(self, rec: list[Any], receiver: int, temp_id: str, msg_id: Any) -> float | None:
        """A live copy of an in-flight message reached ``receiver`` (not its sender): its
        intended send time on the first expected delivery, None for an extra copy."""
        pending = rec[_PENDING]
        if receiver in pending:
            pending.remove(receiver)
            self._delivered_live += 1
            if rec[_MSG_ID] is None and msg_id is not None:
                self._note_id(rec, msg_id)
            if self._opaque:
                self._order.delivered(receiver, rec[_ROOM], rec[_SENDER], rec[_MARK])
            if not pending and rec[_SETTLED]:
                self._retire(temp_id, rec)
            return rec[_T]  # type: ignore[no-any-return]
        self._classify_extra(rec, receiver)
        return None

    def on_backfill(self, receiver: int, temp_id: str, msg_id: Any) -> bool:
        """A REST backfill returned ``temp_id`` to ``receiver``; True if it filled a gap.

        Overlap with a live delivery is normal (the fetch starts before the gap) and is not
        counted anywhere: the session dedups by id.
        """
        rec = self._records.get(temp_id)
        if rec is None or receiver not in rec[_PENDING]:
            return False
        rec[_PENDING].remove(receiver)
        if rec[_BACKFILLED] is None:
            rec[_BACKFILLED] = set()
        rec[_BACKFILLED].add(receiver)
        self._recovered += 1
        if msg_id is not None:
            self._note_id(rec, msg_id)
        if not rec[_PENDING] and rec[_SETTLED]:
            self._retire(temp_id, rec)
        return True

    def on_replay(self, receiver: int, temp_id: str, msg_id: Any) -> bool:
        """A Socket.IO connection state recovery replayed ``temp_id`` to ``receiver`` (it was
        missed live); True if it filled a gap. A copy the receiver already had is a
        duplicate (the replay started before what it had seen), as a second live copy is."""
        rec = self._records.get(temp_id)
        if rec is not None and receiver in rec[_PENDING]:
            rec[_PENDING].remove(receiver)
            self._recovered += 1
            self._recovered_replay += 1
            if msg_id is not None:
                self._note_id(rec, msg_id)
            if not rec[_PENDING] and rec[_SETTLED]:
                self._retire(temp_id, rec)
            return True
        self.on_live(receiver, temp_id, msg_id)  # not pending: classified as any extra copy is
        return False

    def sent_at(self, temp_id: Any) -> float | None:
        """The intended send time of an in-flight ``temp_id`` (None when retired or unknown)."""
        rec = self._records.get(temp_id)
        return None if rec is None else rec[_T]

    def note_replay_overlap(self) -> None:
        """A backfill returned a message the receiver's recovery replay had already brought."""
        self._replay_overlap += 1

    def server_reset(self, room: str, dropped_at: float, t: float) -> bool:
        """A member that lost its connection at ``dropped_at`` found ``room``'s ids restarted
        (observed at ``t``); True if this is a restart not counted yet.

        Once per outage, not per member or room: a member whose drop began before the last
        counted restart was first observed saw that same restart. The room is re-based once
        per restart (its covering ``after`` ids go back to the start)."""
        new = self._reset_seen is None or dropped_at > self._reset_seen
        if new:
            self._reset_seen = t
        rebased = self._room_reset.get(room)
        if rebased is None or dropped_at > rebased:
            self._room_reset[room] = t
            self._hwm.pop(room, None)
            for rec in self._records.values():
                if rec[_ROOM] == room:
                    rec[_PREV] = self._start
        return new

    def note_out_of_order(self) -> None:
        """The session saw a lower id after a higher one for one (receiver, room)."""
        self._out_of_order += 1

    # -- reading ----------------------------------------------------------------------------

    def outstanding(self) -> int:
        """(receiver, message) pairs still pending plus messages whose ack is not settled."""
        pending_pairs = self._expected - self._delivered_live - self._recovered
        unsettled = self._sent - self._acked - self._ack_timeouts - self._ack_errors - self._voided
        return pending_pairs + unsettled

    def missing(self, receiver: int | None = None) -> dict[tuple[int, str], Any]:
        """(receiver, room) -> an ``after`` id for a REST fetch that covers every pending message.

        The value is the smallest ``prev_id`` (room high-water mark at send time) among that
        receiver's pending messages in that room; ids increase per channel, so each pending
        message's id is greater. Pass ``receiver`` to restrict the scan's output to one user.
        """
        out: dict[tuple[int, str], tuple[Any, Any]] = {}
        for rec in self._records.values():
            for r in rec[_PENDING]:
                if receiver is not None and r != receiver:
                    continue
                key = (r, rec[_ROOM])
                prev = out.get(key)
                if prev is None or rec[_PREV][0] < prev[0]:
                    out[key] = rec[_PREV]
        return {key: prev[1] for key, prev in out.items()}

    def counts(self) -> LedgerCounts:
        """A snapshot of the counters (``live_missed`` and ``lost`` derived here)."""
        live_missed = self._expected - self._delivered_live
        return LedgerCounts(
            sent=self._sent, acked=self._acked, ack_timeouts=self._ack_timeouts, ack_errors=self._ack_errors,
            expected=self._expected, delivered_live=self._delivered_live, live_missed=live_missed,
            recovered=self._recovered, lost=live_missed - self._recovered, duplicates=self._duplicates,
            out_of_order=self._out_of_order + self._order.out_of_order, unexpected=self._unexpected, voided=self._voided,
            recovered_replay=self._recovered_replay, recovered_backfill=self._recovered - self._recovered_replay,
            replay_backfill_overlap=self._replay_overlap,
        )

    def pending_by_time(self) -> list[tuple[float, int]]:
        """(intended send time, receivers still pending) of every in-flight message with
        some: after the final reconcile these pairs are the run's ``lost``."""
        return [(rec[_T], len(rec[_PENDING])) for rec in self._records.values() if rec[_PENDING]]

    def unreceived(self) -> list[tuple[int, str]]:
        """(receiver, temp_id) of every pair still pending: after the run, what is lost."""
        return [(r, temp_id) for temp_id, rec in self._records.items() for r in rec[_PENDING]]

    def in_flight(self) -> int:
        """Records not yet retired (for memory checks and debugging)."""
        return len(self._records)

    # -- internals --------------------------------------------------------------------------

    def _note_id(self, rec: _Rec, msg_id: Any) -> None:
        if self._opaque:
            if rec[_MSG_ID] is None:  # first learned: its rank is the server's order
                self._rank += 1
                self._hwm[rec[_ROOM]] = (self._rank, msg_id)
            rec[_MSG_ID] = msg_id
            return
        rec[_MSG_ID] = msg_id
        if type(msg_id) is int and msg_id > self._hwm.get(rec[_ROOM], self._start)[0]:
            self._hwm[rec[_ROOM]] = (msg_id, msg_id)

    def _classify_extra(self, rec: _Rec, receiver: int) -> None:
        """A live copy for a receiver that is not pending: duplicate, late live, or unexpected."""
        if receiver == rec[_SENDER] or receiver not in rec[_MEMBERS]:
            self._unexpected += 1  # e.g. a member that joined after the send
        elif rec[_BACKFILLED] is not None and receiver in rec[_BACKFILLED]:
            rec[_BACKFILLED].discard(receiver)  # the one live copy after a backfill: overlap
        else:
            self._duplicates += 1

    def _find_retired(self, temp_id: Any) -> tuple[int, frozenset[int], _Rec | None] | None:
        return self._retired.sender_members(temp_id) or self._retired_old.sender_members(temp_id)

    def _retire(self, temp_id: str, rec: _Rec) -> None:
        del self._records[temp_id]
        rec[_PENDING] = None  # free the empty set; retired records only classify stragglers
        retired = self._retired
        codes = retired.codes
        i = None if rec[_BACKFILLED] else retired.index.get(rec[_MEMBERS])
        if i is None:
            retired.add(temp_id, rec)
        else:  # _Retired.add's common case, inlined: once per message
            codes[temp_id] = i << _SENDER_BITS | rec[_SENDER]
        if len(codes) >= self._retired_window:
            self._retired_old = retired
            self._retired = _Retired()
