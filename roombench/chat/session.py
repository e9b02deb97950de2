"""One virtual user's app session: the client model of the reference lesson.

Exactly one persistent connection; a set of active rooms re-joined on EVERY connect;
messages sent with a fresh temp_id and pending until confirmed (Socket.IO ack or the
server's echo); the last id received per room, and after a reconnect a REST backfill
from the last id held when the connection dropped, merged without duplicates.

Handlers run inline on the transport's receive path, so they only do dict lookups,
ledger updates and histogram records. Blocking work (REST) runs in its own greenlet.
"""

from __future__ import annotations

import functools
import random
import time
import types
from typing import Any

import gevent
import gevent.event

from roombench.chat.backfill import error_kind as backfill_error_kind
from roombench.chat.clock import BATCH
from roombench.chat.context import SessionContext
from roombench.chat.ledger import OWN
from roombench.chat.schedule import OpenLoop, RandomEvery
from roombench.chat.signals import SentSignals
from roombench.exceptions import BackfillError, ConnectFailed
from roombench.transport.base import ReconnectPolicy
from roombench.transport.registry import make_transport
from roombench.wire.profile import Profile

now = time.perf_counter

#: longest one rejoin's backfill may take (the REST client also ends it by the run's end)
BACKFILL_S = 10.0
#: the initial gap_start and _fresh of every session, replaced (never written) at its first drop:
#: read-only, so a write before that fails loudly instead of changing every session's
_NO_ROOMS: Any = types.MappingProxyType({})
#: every session's disconnected_sends while it holds none, and unconfirmed in callback mode
#: (the transport holds the acks): one shared empty mapping stays in the CPU's caches, where
#: 1,000 sessions' own dicts, each read once per ack, cost ~0.5 us per ack (bench_hotpath)
_NOTHING: Any = types.MappingProxyType({})
#: every session's ``joined`` once it joined (an Event of its own costs each idle user ~0.15 KB)
_JOINED = gevent.event.Event()
_JOINED.set()
#: drop times of every session: a Random of its own would cost each user 2.5 KB of state
_DROP_RNG = random.Random()


# shared by every session of the same scenario: one per user would cost each idle user ~0.2 KB
@functools.lru_cache(maxsize=8)
def _content(size: int) -> str:
    return "x" * size


@functools.lru_cache(maxsize=8)
def _policy(delay: float, delay_max: float) -> ReconnectPolicy:
    return ReconnectPolicy(delay=delay, delay_max=delay_max)


class _Names:
    """The profile's event and field names a session uses, one object per profile: 14 of
    each session's own attributes would cost every idle user ~0.1 KB."""

    __slots__ = ("ev_send", "ev_typing", "ev_read", "ev_new", "ev_user_typing", "ev_read_by", "f_ch", "f_content",
                 "f_temp", "f_id", "f_sender", "f_channel", "f_user", "f_msg")

    def __init__(self, p: Profile) -> None:
        self.ev_send, self.ev_typing, self.ev_read = p.event("send_message"), p.event("typing"), p.event("mark_read")
        self.ev_new, self.ev_user_typing, self.ev_read_by = (
            p.event("new_message"), p.event("user_typing"), p.event("message_read"))
        self.f_ch, self.f_content, self.f_temp = p.field("channel_id"), p.field("content"), p.field("temp_id")
        self.f_id, self.f_sender, self.f_channel = p.field("id"), p.field("sender_id"), p.field("channel")
        self.f_user, self.f_msg = p.field("user_id"), p.field("message_id")


#: id(profile) -> (the profile, its names); the profile kept so its id cannot be reused
_NAMES: dict[int, tuple[Profile, _Names]] = {}


def _names(p: Profile) -> _Names:
    hit = _NAMES.get(id(p))
    if hit is None or hit[0] is not p:
        if len(_NAMES) >= 64:
            _NAMES.clear()
        hit = _NAMES[id(p)] = (p, _Names(p))
    return hit[1]


#: every session's drop schedule without forced drops (it never advances)
_NO_DROPS = RandomEvery(0.0, 0.0)


class ChatSession:
    """One user: connection, rooms, pending temp_ids, last ids, backfill and merge."""

    # slots: an instance dict of ~35 attributes costs each idle user ~1.5 KB
    __slots__ = ("gen", "no", "user_id", "server_id", "rooms", "last_id", "gap_start", "unconfirmed",
                 "disconnected_sends", "joined", "t_connect", "t_drop", "t_connected", "epoch", "_joins_left",
                 "_closed", "_callback", "_window", "_inflight", "_k", "content", "_n", "transport", "_sends", "_drops", "_house", "_tick",
                 "_replayed", "_recovered_gap", "_fresh")

    def __init__(self, gen: SessionContext, user_no: int) -> None:
        self.gen = gen
        self.no = user_no
        sc, p = gen.scenario, gen.profile
        self.user_id = f"{gen.ledger.prefix}u{user_no}"
        #: how the server names us; learned from our first echo if it ignores ours
        self.server_id: Any = self.user_id
        self.rooms = gen.rooms_for(user_no)
        self.last_id: dict[str, int] = {}
        self.gap_start: dict[str, Any] = _NO_ROOMS  # a dict of its own from the first drop on
        self._callback = sc.ack == "callback"
        #: echo mode: temp_id -> ack deadline; callback mode keeps none (the transport holds
        #: the acks, and the ledger knows an own copy that came before its ack)
        self.unconfirmed: dict[str, float] = _NOTHING if self._callback else {}
        self._inflight = 0  # callback mode: acks awaited (each callback comes exactly once)
        #: temp_id -> "": sends whose ack died with the connection, fate decided by backfill
        self.disconnected_sends: dict[str, str] = _NOTHING
        # room -> when our connection dropped, until the first id of the room on the new
        # connection: an id below the one we held then means the server restarted
        self._fresh: dict[str, float] = _NO_ROOMS
        self.joined = gevent.event.Event()
        self.t_connect = 0.0
        self.t_drop: float | None = None
        self.t_connected = 0.0
        self.epoch = 0
        self._joins_left = 0
        self._closed = False
        self._window = sc.window  # > 0: closed loop, see _fill
        self._k = 0  # messages sent so far: picks the room and the typing / read-receipt turns
        self.content = _content(sc.size)
        self._n = _names(p)
        # the session is its own transport.Handlers (on_connect, on_disconnect, on_event, on_error)
        self.transport = make_transport(
            sc.transport, gen.hosts[user_no % len(gen.hosts)], p, self, token=sc.token or None,
            auth_extra={p.field("user_id"): self.user_id},
            reconnect=_policy(sc.reconnect_delay, sc.reconnect_delay_max), ack_timeout=sc.ack_timeout,
            connect_timeout=sc.connect_timeout)
        # connection state recovery (--recovery csr|auto): the transport sends {pid, offset}
        self.transport.recover = sc.recovery != "rest"
        #: auto: temp_ids the recovery replay brought in this gap (the backfill overlap with it)
        self._replayed: set[str] | None = None
        #: auto: the reconnect of this gap was recovered (what the backfill still finds, recovery missed)
        self._recovered_gap = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> bool:
        """Connect and join every room; False (error counted) if that failed."""
        self.t_connect = now()
        try:
            self.transport.connect()
        except ConnectFailed as exc:
            if self._closed or self.gen.stopping:  # the run or the user ended mid-connect: not the server's failure
                self.gen.counters["connects_cancelled"] += 1
            else:
                self.gen.error("connect_failed", str(exc))
            return False
        if not self.joined.wait(self.gen.scenario.ack_timeout):
            self.gen.error("join_timeout", f"rooms not joined within {self.gen.scenario.ack_timeout} s")
        return True

    def run(self) -> None:
        """Connect (retrying), then hand the send schedule, with forced drops, to the
        process's clock (:mod:`roombench.chat.clock`): returns once it is handed over;
        the clock runs :meth:`step` until the run stops or the session closes. With
        ``ROOMBENCH_SENDER=greenlet`` this greenlet runs the schedule itself and returns
        when the run stops.

        Open loop (the default): sends at ``rate`` whatever happens, latency counted from
        each intended send time. Closed loop (``window`` > 0): the ack handlers send the
        next message inline as soon as one is confirmed (see :meth:`_fill`); the schedule
        only refills the window after a reconnect or a timeout.
        """
        sc, gen = self.gen.scenario, self.gen
        while not gen.stopping and not self.joined.is_set() and not self.start():
            gevent.sleep(min(5.0, sc.reconnect_delay * 2) * random.uniform(0.5, 1.5))
        t0 = now()
        self._sends = OpenLoop(sc.rate, t0)
        if self._window:
            self._sends.next = float("inf")
            self._fill()
        self._drops = RandomEvery(sc.drop_every, t0, _DROP_RNG) if sc.drop_every else _NO_DROPS
        # echo mode expires unconfirmed sends here and the closed loop refills; an open
        # loop in callback mode (the transport expires acks) only needs a rare wake-up
        self._tick = 0.5 if self._window or not self._callback else 5.0
        self._house = t0 + self._tick
        first = min(self._sends.next, self._drops.next, self._house)
        if gen.clock is not None:
            gen.clock.add(self, first)
            return
        nxt: float | None = first
        while nxt is not None:
            wait = nxt - now()
            if wait > 0:
                gevent.sleep(wait)
            nxt = self.step()

    def step(self) -> float | None:
        """Do what is due (at most clock.BATCH items); the next due time, or None once
        the run stops or the session closed."""
        gen, sends, drops = self.gen, self._sends, self._drops
        t = now()
        for _ in range(BATCH):
            if gen.stopping or self._closed:
                return None
            due = min(sends.next, drops.next, self._house)
            if due > t:
                return due
            if sends.next <= due:
                self.send(self.rooms[self._k % len(self.rooms)], sends.advance(), self._k)
                self._k += 1
            elif drops.next <= due:
                drops.advance()
                self.drop()
            else:
                self._house = now() + self._tick
                self._expire_unconfirmed()
                if self._window:
                    self._fill()
        return None if gen.stopping or self._closed else min(sends.next, drops.next, self._house)

    def _fill(self) -> None:
        """Closed loop: send (now = the latency origin) until ``window`` messages are unconfirmed."""
        gen, rooms = self.gen, self.rooms
        while (self._inflight if self._callback else len(self.unconfirmed)) < self._window:  # in_flight, inlined
            if gen.stopping or not self.send(rooms[self._k % len(rooms)], now(), self._k):
                return
            self._k += 1

    def close(self) -> None:
        """Leave every room and close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        leave, f_room = self.gen.profile.event("leave"), self.gen.profile.field("room")
        for room in self.rooms:
            if self.transport.connected:
                self.transport.emit(leave, {f_room: room})
            self.gen.registry.remove(room, self.no)
        self.transport.close()
        for temp_id in list(self.unconfirmed) + list(self.disconnected_sends):
            self.gen.ledger.on_ack_failed(temp_id, "disconnected")
        if not self._callback:
            self.unconfirmed.clear()
        self.disconnected_sends = _NOTHING

    @property
    def in_flight(self) -> int:
        """Messages sent whose ack (or echo) has not come nor failed yet."""
        return self._inflight if self._callback else len(self.unconfirmed)

    @property
    def whole(self) -> bool:
        """False between a drop and the end of its backfill merge."""
        return self.t_drop is None

    # -- sending ---------------------------------------------------------------------

    def send(self, room: str, intended: float, k: int) -> bool:
        """Send one message due at ``intended`` (plus typing / read receipt by schedule);
        False when it could not go out (not connected, or the connection died under it)."""
        gen = self.gen
        if not self.transport.connected:
            if not self._window:  # closed loop: nothing was due, so nothing was skipped
                gen.counters["sends_skipped_offline"] += 1
            return False
        sc = gen.scenario
        if sc.typing_every and k % sc.typing_every == 0:
            if self.server_id is not None:  # else no receiver could tell it is ours
                gen.typing_sent.sent((room, self.server_id), intended, len(gen.registry.members(room)) - 1)
            self.transport.emit(self._n.ev_typing, {self._n.f_channel: room})
        temp_id = gen.ledger.new_temp_id()
        gen.ledger.on_sent(temp_id, room, self.no, gen.registry.members(room), intended)
        n = self._n
        data = {n.f_ch: room, n.f_content: self.content, n.f_temp: temp_id}
        if self._callback:
            sent = self.transport.emit(n.ev_send, data, self._on_ack, temp_id)
            if sent:
                self._inflight += 1
        else:
            self.unconfirmed[temp_id] = intended + sc.ack_timeout
            sent = self.transport.emit(n.ev_send, data)
            if not sent:
                del self.unconfirmed[temp_id]
        if not sent:  # the connection died under us: nothing left, nobody can expect it
            gen.ledger.void(temp_id)
            return False
        if sc.read_every and k % sc.read_every == sc.read_every - 1 and room in self.last_id:
            msg_id = self.last_id[room]
            if self.server_id is not None:
                gen.read_sent.sent((room, self.server_id, msg_id), now(), len(gen.registry.members(room)) - 1)
            self.transport.emit(self._n.ev_read, {self._n.f_ch: room, self._n.f_msg: msg_id})
        return True

    def drop(self) -> None:
        """Force a network failure: abort the TCP connection (the reconnect path follows)."""
        if self.transport.connected and self.whole:
            self.gen.counters["forced_drops"] += 1
            self.t_drop = now()
            down = self.gen.scenario.drop_for
            if down:
                self.transport.drop_for(down)
            else:
                self.transport.drop()

    def _on_ack(self, temp_id: str, payload: Any, error: str | None) -> None:
        t = now()
        ledger = self.gen.ledger
        self._inflight -= 1
        if error is None:
            msg_id = payload.get(self._n.f_id) if isinstance(payload, dict) else None
            if msg_id is None:
                self.gen.error("ack_malformed", f"send_message ack without {self._n.f_id!r}: {payload!r:.80}")
                ledger.on_ack_failed(temp_id, "malformed")
                return
            t0 = ledger.on_acked(temp_id, msg_id)
            if t0 is not None:
                self.gen.metrics.record("ack", t - t0)
            if self._window:
                self._fill()
        elif error == "disconnected":
            if ledger.server_has(temp_id):  # a copy of it (our own echo) reached us before the drop
                ledger.on_acked(temp_id, None)
            else:
                self._hold(temp_id)
        else:
            self._record_timeout(ledger.on_ack_failed(temp_id, error), t)

    def _hold(self, temp_id: str) -> None:
        """Keep a send whose ack died with the connection: the backfill decides its fate."""
        if self.disconnected_sends is _NOTHING:
            self.disconnected_sends = {}
        self.disconnected_sends[temp_id] = ""

    def _record_timeout(self, t0: float | None, t: float) -> None:
        # a timed-out ack counts at the latency it had reached (>= ack_timeout): leaving the
        # slowest answers out would make a stall look better (docs/ARCHITECTURE.md, Timing)
        if t0 is not None:
            self.gen.metrics.record("ack", t - t0)

    def _expire_unconfirmed(self) -> None:
        """Echo mode: messages whose echo did not come within ack_timeout."""
        if self._callback or not self.unconfirmed:
            return
        t = now()
        late = [tid for tid, deadline in self.unconfirmed.items() if deadline < t]
        for tid in late:
            del self.unconfirmed[tid]
            self._record_timeout(self.gen.ledger.on_ack_failed(tid, "timeout"), t)

    # -- receiving (inline on the receive path) --------------------------------------

    def on_error(self, kind: str, detail: str) -> None:
        self.gen.error(kind, detail)

    def on_event(self, event: str, data: Any) -> None:
        if event == self._n.ev_new:
            self._on_new_message(data)
        elif event == self._n.ev_user_typing:
            self._on_signal(self.gen.typing_sent, "typing", data, (self._n.f_channel, self._n.f_user))
        elif event == self._n.ev_read_by:
            self._on_signal(self.gen.read_sent, "read_receipt", data, (self._n.f_ch, self._n.f_user, self._n.f_msg))
        else:
            self.gen.counters["unknown_events"] += 1

    def _on_new_message(self, data: Any) -> None:
        t = now()
        try:
            n = self._n
            temp_id, room, msg_id, sender = data[n.f_temp], data[n.f_ch], data[n.f_id], data.get(n.f_sender)
        except (TypeError, KeyError, AttributeError):
            self.gen.error("malformed_message", f"new_message missing fields: {data!r:.80}")
            return
        gen = self.gen
        if type(msg_id) is not int and not gen.profile.is_id(msg_id):
            gen.error("malformed_message", f"new_message id is not an integer: {msg_id!r:.40} "
                      "(a server with string ids needs id_order = \"opaque\" in its profile)")
            return
        state = None if self._callback else self.unconfirmed.get(temp_id)
        if state is not None:
            self._on_own_echo(temp_id, msg_id, sender, state, t)
        elif self.transport.replaying:
            if gen.ledger.sender_of(temp_id) == self.no:
                self._on_own_echo(temp_id, msg_id, sender, None, t)
            else:
                self._on_replayed(temp_id, msg_id)
        else:
            t0 = gen.ledger.on_copy(self.no, temp_id, msg_id)  # own copy or delivery: one lookup
            if t0 is OWN:
                self._on_own_echo(temp_id, msg_id, sender, None, t)
            elif t0 is None:
                return
            else:
                gen.metrics.record("fanout", t - t0)
        if type(msg_id) is not int or gen.profile.opaque_ids:
            self._note_opaque_id(room, msg_id)
            return
        last = self.last_id.get(room, 0)
        if self._fresh and room in self._fresh:
            if msg_id < last:  # the first id after a reconnect went back: a restarted server
                self._server_restarted(room, msg_id, self._fresh.pop(room))
                return
            del self._fresh[room]
        if msg_id > last:
            self.last_id[room] = msg_id
        elif msg_id < last:
            gen.ledger.note_out_of_order()

    def _note_opaque_id(self, room: str, msg_id: Any) -> None:
        """Opaque ids: the last id received is the server's newest one (live order is its
        order); out-of-order is not judged by comparing values."""
        self.last_id[room] = msg_id

    def _on_own_echo(self, temp_id: str, msg_id: Any, sender: Any, state: float | None, t: float) -> None:
        # known by temp_id, not by user id: the server may name us itself (and anew after
        # every reconnect), so its name for us is learned from every own copy
        if sender is not None:
            self.server_id = sender
        if state is None:  # callback mode (the ledger noted the copy), or already confirmed by its echo
            if temp_id in self.disconnected_sends:  # its ack was lost with the connection: the server had it
                del self.disconnected_sends[temp_id]
                self.gen.ledger.on_acked(temp_id, msg_id)
            return
        del self.unconfirmed[temp_id]
        t0 = self.gen.ledger.on_acked(temp_id, msg_id)
        if t0 is not None:
            self.gen.metrics.record("ack", t - t0)
        if self._window:
            self._fill()

    def _on_signal(self, sent: SentSignals, metric: str, data: Any, keys: tuple[str, ...]) -> None:
        try:
            key = tuple(data[k] for k in keys)
        except (TypeError, KeyError):
            self.gen.error("malformed_" + metric, f"missing fields in {data!r:.80}")
            return
        if key[1] == self.server_id:  # the actor's own copy is no delivery
            return
        t0 = sent.received(key)
        if t0 is not None:
            self.gen.metrics.record(metric, now() - t0)

    def _on_replayed(self, temp_id: str, msg_id: Any) -> None:
        """A message the server's recovery replayed (missed live: no fan-out latency)."""
        self.gen.ledger.on_replay(self.no, temp_id, msg_id)
        if self.gen.scenario.recovery == "auto":
            if self._replayed is None:
                self._replayed = set()
            self._replayed.add(temp_id)

    # -- connection lifecycle (inline) ------------------------------------------------

    def on_connect(self, is_reconnect: bool) -> None:
        t = now()
        if is_reconnect:
            self._forget_server_name()
            self.t_connected = t
            if self.t_drop is not None:
                self.gen.metrics.record("reconnect", t - self.t_drop)
            mode = self.gen.scenario.recovery
            if mode != "rest" and self._count_recovery(t) and mode == "csr":
                self._resume_recovered()
                return  # the server restored our rooms: no rejoin, no backfill
        else:
            self.gen.metrics.record("connect", t - self.t_connect)
        self._joins_left = len(self.rooms)
        join, f_room = self.gen.profile.event("join"), self.gen.profile.field("room")
        epoch = self.epoch
        for room in self.rooms:
            if self.gen.profile.join_ack:
                self.transport.emit(join, {f_room: room}, self._on_join_ack, (room, epoch))
            else:
                self.transport.emit(join, {f_room: room})
                self._on_join_ack((room, epoch), None, None)

    def _count_recovery(self, t: float) -> bool:
        """Count this reconnect's recovery outcome; True when the server recovered the session."""
        counters, rec = self.gen.counters, self.transport.recovery
        counters["recovery_reconnects"] += 1
        if rec is None or not rec.recovered:
            counters["recovery_not_recovered." + ((rec.reason or "unknown") if rec else "unsupported")] += 1
            self._recovered_gap = False
            return False
        counters["recovery_recovered"] += 1
        counters["recovery_replayed"] += rec.replayed
        if self.t_drop is not None:
            self.gen.metrics.record("recover", t - self.t_drop)
        self._recovered_gap = True
        return True

    def _resume_recovered(self) -> None:
        """--recovery csr, recovered: the replay (which came before the CONNECT reply) holds
        every event for our rooms since our offset, our own echoes included; a send whose
        echo it did not hold never reached the server (it died with the connection)."""
        for temp_id in self.disconnected_sends:
            self.gen.ledger.void(temp_id)
        self.disconnected_sends = _NOTHING
        self.t_drop = None
        if self._window:
            self._fill()

    def _forget_server_name(self) -> None:
        """A server that named us itself may name us anew on this connection: unknown
        (typing and read receipts untimed) until our next own copy tells."""
        if self.server_id != self.user_id:
            self.server_id = None

    def _on_join_ack(self, room_epoch: tuple[str, int], payload: Any, error: str | None) -> None:
        room, epoch = room_epoch
        if epoch != self.epoch:
            return
        if error is not None:
            self.gen.error("join_failed", f"join {room!r}: {error}")
        elif room not in self.last_id:
            last = payload.get(self.gen.profile.field("last_id")) if isinstance(payload, dict) else None
            self.last_id[room] = last if self.gen.profile.is_id(last) else self.gen.profile.no_id
        elif room in self._fresh:
            self._check_rejoin(room, payload)
        self.gen.registry.add(room, self.no)
        self._joins_left -= 1
        if self._joins_left:
            return
        if self._window and self.joined.is_set():  # a reconnect failed what was in flight: refill
            self._fill()
        if not self.joined.is_set():
            self.joined.set()
            self.joined = _JOINED  # the waiters are woken; one set Event serves every session from now on
        elif self.t_drop is not None:
            self.gen.metrics.record("rejoin", now() - self.t_connected)
            self.gen.note_rejoined(self.no, now())  # reconnect storms
            gevent.spawn(self._backfill, epoch)

    def _check_rejoin(self, room: str, payload: Any) -> None:
        """A rejoin's ``last_id`` below the id we held (or none where we held one) means the
        server restarted and lost ids. A server that does not say (no dict, no key) tells nothing."""
        p, f_last = self.gen.profile, self.gen.profile.field("last_id")
        if not isinstance(payload, dict) or f_last not in payload:
            return
        dropped = self._fresh.pop(room)
        held, last = self.last_id.get(room, p.no_id), payload[f_last]
        if held == p.no_id or not p.is_id(held):
            return
        if last is None or (type(last) is int and type(held) is int and not p.opaque_ids and last < held):
            self._server_restarted(room, last if p.is_id(last) else p.no_id, dropped)

    def _server_restarted(self, room: str, server_last: Any, dropped: float) -> None:
        """Re-base ``room`` on the restarted server: its ids are ours from now on, and what we
        missed is fetched from its start (only what it really lost stays lost); counted once
        per restart (see Ledger.server_reset)."""
        gen, t = self.gen, now()
        if gen.ledger.server_reset(room, dropped, t):
            gen.counters["server_resets"] += 1
        self.last_id[room] = server_last
        self.gap_start[room] = gen.profile.no_id

    def on_disconnect(self, reason: str) -> None:
        if self.t_drop is None:  # not forced by us: the server or the network did it
            self.t_drop = now()
            self.gen.error("disconnected", reason)
            self.gen.note_drop(self.no, self.t_drop)  # reconnect storms
        self.epoch += 1
        self.gap_start = dict(self.last_id)
        self._replayed = None
        self._fresh = dict.fromkeys(self.last_id, self.t_drop)
        if not self._callback:  # echo mode: the transport holds no acks to fail for us
            for temp_id in self.unconfirmed:
                self._hold(temp_id)
            self.unconfirmed.clear()

    # -- backfill and merge ----------------------------------------------------------

    def _backfill(self, epoch: int) -> None:
        """After a rejoin: fetch what each room missed since the drop and merge it."""
        gen, t_fetch = self.gen, now()
        fetched: dict[str, list[dict[str, Any]]] = {}
        for room in self.rooms:
            try:
                after = self.gap_start.get(room, gen.profile.no_id)
                fetched[room] = gen.rest.after(room, after, time.monotonic() + BACKFILL_S)
            except BackfillError as exc:
                gen.error(backfill_error_kind(exc), str(exc))
        t_merge = now()
        gen.note_backfill(len(self.rooms), sum(len(items) for items in fetched.values()))  # storm backfill load
        self._merge(fetched)
        self._replayed = None
        self._recovered_gap = False
        t_done = now()
        if epoch == self.epoch and self.t_drop is not None:
            gen.metrics.record("fetch", t_merge - t_fetch)
            gen.metrics.record("merge", t_done - t_merge)
            gen.metrics.record("backfill", t_done - self.t_drop)
            self.t_drop = None
            gen.note_whole(self.no, t_done)  # reconnect storms

    def _merge_one(self, temp_id: str, msg_id: Any) -> None:
        """One backfilled message of someone else; under --recovery auto it also tells what
        a recovered reconnect missed (sent before it, not replayed) and the replay overlap."""
        ledger = self.gen.ledger
        if not self._recovered_gap:
            ledger.on_backfill(self.no, temp_id, msg_id)
            return
        if self._replayed is not None and temp_id in self._replayed:
            ledger.note_replay_overlap()
        t0 = ledger.sent_at(temp_id)
        # sent after the recovered CONNECT: live (maybe still in flight), not a miss of recovery
        if ledger.on_backfill(self.no, temp_id, msg_id) and t0 is not None and t0 < self.t_connected:
            self.gen.counters["recovery_backfilled_after"] += 1

    def _merge(self, fetched: dict[str, list[dict[str, Any]]]) -> None:
        """Merge backfilled messages: the ledger dedups by temp_id; our own unconfirmed
        sends found here reached the server, the others never did (void)."""
        ledger, f_temp, f_id = self.gen.ledger, self._n.f_temp, self._n.f_id
        for room, items in fetched.items():
            for m in items:
                temp_id, msg_id = m.get(f_temp), m.get(f_id)
                if temp_id in self.disconnected_sends:
                    del self.disconnected_sends[temp_id]
                    ledger.on_acked(temp_id, msg_id, heard=False)
                elif isinstance(temp_id, str):
                    self._merge_one(temp_id, msg_id)
                if type(msg_id) is int and not self.gen.profile.opaque_ids:
                    if msg_id > self.last_id.get(room, 0):
                        self.last_id[room] = msg_id
                elif self.gen.profile.is_id(msg_id):
                    self._note_opaque_id(room, msg_id)  # the backfill lists in the server's order
        if len(fetched) == len(self.rooms):
            for temp_id in self.disconnected_sends:
                ledger.void(temp_id)
            self.disconnected_sends = _NOTHING
