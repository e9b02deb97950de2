"""`roombench check URL`: a conformance probe of one server against the contract, in seconds.

Two clients (the generator's own lean transport and REST client, spelling every name the
way the profile says) connect, join a fresh room, send, type, mark read, drop and
reconnect, and every contract point gets one PASS / FAIL / SKIP line with a one-line
reason, so a user learns what the server gets wrong before a long run does.

Run it in a gevent-patched process (the ``check`` verb patches first). Every wait has its
own timeout and the whole check a budget (five timeouts), so even a silent server costs
seconds, not minutes; nothing escapes as a traceback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gevent

from roombench.check.backfill_points import BackfillPoints
from roombench.check.client import CheckClient, Failed, Sent, Skipped, id_ok, message_problems
from roombench.exceptions import ConnectFailed, ConnectTimeout, HandshakeFailed
from roombench.exceptions import Refused
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.chat.backfill import BackfillClient

__all__ = ["CheckResult", "POINTS", "check", "format_results"]

Status = Literal["PASS", "FAIL", "SKIP"]

#: every contract point, in the order they are checked and printed
POINTS: dict[str, str] = {
    "connect": "two clients connect (path, namespace, token placement)",
    "auth": "a wrong token is refused",
    "join": "join is acked with {ok: true, last_id: int|null}",
    "confirm": "send_message is confirmed (ack or echo, as ack_mode says)",
    "fanout": "new_message reaches every member with every field",
    "ids": "ids are positive integers, increasing per channel",
    "typing": "typing reaches the other member, not the typist",
    "read_receipt": "a read receipt reaches the room",
    "backfill": "REST backfill: messages in id order, after and limit honoured",
    "backfill_auth": "REST backfill refuses a wrong token (401/403)",
    "reconnect": "a dropped client reconnects, rejoins and gets live messages again",
    "catch_up": "backfill after the rejoin brings what was sent while away",
}

_now = time.monotonic


@dataclass(frozen=True)
class CheckResult:
    """One contract point's verdict: PASS, FAIL or SKIP (not checked), and why."""

    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        """False only for FAIL."""
        return self.status != "FAIL"


def check(url: str, profile: Profile = DEFAULT_PROFILE, token: str | None = None,
          timeout: float = 3.0, transport: str = "lean") -> list[CheckResult]:
    """Probe the server at ``url`` as ``profile`` describes it; one result per :data:`POINTS` entry.

    ``transport``: "lean" for Socket.IO servers, "ws" for the plain WebSocket envelope."""
    return _Check(url, profile, token, timeout, transport).run()


def format_results(results: list[CheckResult], url: str, profile: Profile) -> str:
    """The lines `roombench check` prints: a header, one line per point, a tally."""
    where = f"path {profile.path}, namespace {profile.namespace}, token in {profile.token_in}, ack {profile.ack_mode}"
    lines = [f"roombench check {url} (profile {profile.name}: {where})"]
    width = max(len(name) for name in POINTS)
    lines += [f"{r.status} {r.name:<{width}}  {r.detail}" for r in results]
    tally = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} not checked")
    return "\n".join(lines)


class _Check(BackfillPoints):
    """One probe: the steps in order, their results, and the shared state between them."""

    def __init__(self, url: str, profile: Profile, token: str | None, timeout: float, transport: str) -> None:
        self.url, self.profile, self.token, self.timeout = url, profile, token or None, timeout
        # several comma-separated URLs (one server in several processes): A and B connect
        # to different processes, so fan-out is checked across them
        self.urls = [u.strip() for u in url.split(",") if u.strip()]
        self.transport = transport
        self.deadline = _now() + 5 * timeout
        self.room = f"rbcheck-{secrets.token_hex(4)}"
        self.results: dict[str, CheckResult] = {}
        self.clients: list[CheckClient] = []
        self.sent: list[Sent] = []  # every message sent, in send order
        self.rest: BackfillClient | None = None
        self.gap_after: Any = 0  # the newest id client A had seen when it was dropped
        self.missed: list[str] = []  # temp_ids sent while A was away
        self.f = profile.field
        self.ev = profile.event

    # -- the plan ---------------------------------------------------------------------

    def run(self) -> list[CheckResult]:
        try:
            self.steps()
        finally:
            self.close()
        first = next((r.name for r in self.results.values() if r.status == "FAIL"), "an earlier point")
        return [self.results.get(name) or CheckResult(name, "SKIP", f"not checked: {first} failed")
                for name in POINTS]

    def steps(self) -> None:
        if self.step("connect", self.connect) != "PASS":
            return
        self.step("auth", self.auth)
        if self.step("join", self.join) == "FAIL":  # SKIP: joined, but the profile has no join ack
            return
        for name in ("confirm", "fanout", "ids", "typing", "read_receipt", "backfill", "backfill_auth"):
            self.step(name, getattr(self, name))
        status = self.step("reconnect", self.reconnect)
        if status == "PASS":
            self.step("catch_up", self.catch_up)
        else:
            why = "failed" if status == "FAIL" else "was not checked"
            self.results["catch_up"] = CheckResult("catch_up", "SKIP", f"not checked: reconnect {why}")

    def step(self, name: str, fn: Callable[[], str]) -> Status:
        """Run one point and record its result."""
        if self.left() <= 0:
            result = CheckResult(name, "SKIP", f"not checked: the check's {5 * self.timeout:g} s ran out")
        else:
            try:
                result = CheckResult(name, "PASS", fn())
            except Skipped as exc:
                result = CheckResult(name, "SKIP", str(exc))
            except Failed as exc:
                result = CheckResult(name, "FAIL", str(exc))
            except Exception as exc:  # noqa: BLE001 - one line per point, never a traceback
                result = CheckResult(name, "FAIL", f"unexpected {type(exc).__name__}: {exc}")
        self.results[name] = result
        return result.status

    def left(self, limit: float | None = None) -> float:
        """Seconds this wait may take: the point's timeout, within the whole check's budget."""
        return min(self.timeout if limit is None else limit, self.deadline - _now())

    def close(self) -> None:
        for client in self.clients:
            client.transport.close()
        if self.rest is not None:
            self.rest.close()

    # -- connecting -------------------------------------------------------------------

    def connect(self) -> str:
        t0 = _now()
        for i, label in enumerate(("A", "B")):
            url = self.urls[i % len(self.urls)]
            client = CheckClient(label, url, self.profile, self.token, self.left(), self.transport)
            try:
                client.transport.connect()
            except ConnectFailed as exc:
                raise Failed(f"client {label}: {exc}{self.connect_hint(exc)}") from None
            self.clients.append(client)
        return f"2 clients connected in {1000 * (_now() - t0):.0f} ms"

    def connect_hint(self, exc: ConnectFailed) -> str:
        """Which profile setting may explain this failure (decided on its type and fields)."""
        p = self.profile
        if isinstance(exc, Refused):
            return f" (profile: token in {p.token_in})" if self.token else " (does the server need --token?)"
        if isinstance(exc, HandshakeFailed) or (isinstance(exc, ConnectTimeout) and exc.stage == "handshake"):
            return f" (profile: path {p.path}, token in {p.token_in})"
        if isinstance(exc, ConnectTimeout) and self.transport == "lean":  # the Socket.IO connect
            return f" (profile: namespace {p.namespace})"
        return ""

    def auth(self) -> str:
        if not self.token:
            raise Skipped("no --token given: nothing to refuse")
        client = CheckClient("X", self.urls[0], self.profile, "wrong-" + self.token, self.left(), self.transport)
        try:
            client.transport.connect()
        except ConnectFailed as exc:
            if isinstance(exc, ConnectTimeout):
                raise Failed(f"a wrong token was neither refused nor accepted: {exc}") from None
            return f"refused: {exc}"
        client.transport.close()
        raise Failed("a connection with a wrong token was accepted")

    def join(self) -> str:
        if not self.profile.join_ack:
            for c in self.clients:
                c.transport.emit(self.ev("join"), {self.f("room"): self.room})
            gevent.sleep(min(0.3, self.left()))
            raise Skipped("the profile says join is not acked: joined without checking")
        jobs = [gevent.spawn(c.request, self.ev("join"), {self.f("room"): self.room}, self.left())
                for c in self.clients]
        gevent.joinall(jobs)
        answers: list[tuple[Any, str | None]] = [job.get() for job in jobs]  # (payload, error) each
        notes = {self.join_ack(client, payload, error, expect=None)
                 for client, (payload, error) in zip(self.clients, answers)}
        return f"both joined {self.room!r}; ack {answers[0][0]!r:.80}" + "".join(notes)

    def join_ack(self, client: CheckClient, payload: Any, error: str | None, expect: int | None) -> str:
        """FAIL unless ``payload`` is a join ack with ok true and last_id ``expect``; a note."""
        if error == "timeout":
            raise Failed(f"client {client.label}: no {self.ev('join')!r} ack within {self.timeout:g} s (does the "
                         f"server name join {self.ev('join')!r} and the room {self.f('room')!r}? if it does not ack "
                         f"joins, set join_ack = false){client.hint()}")
        if error is not None:
            raise Failed(f"client {client.label}: no join ack ({error}){client.hint()}")
        ok, last = self.f("ok"), self.f("last_id")
        if not isinstance(payload, dict) or payload.get(ok) is not True or last not in payload:
            raise Failed(f"client {client.label}: join ack {payload!r:.80} is not {{{ok!r}: true, {last!r}: ...}}")
        if expect is None and payload[last] == 0 and not isinstance(payload[last], bool):
            return f" (note: {last!r} 0 for an empty room; the contract says null, roombench takes either)"
        if payload[last] != expect or isinstance(payload[last], bool):
            want = "null (the room is new)" if expect is None else f"{expect}, the room's newest id"
            raise Failed(f"client {client.label}: join ack {last!r} is {payload[last]!r}, expected {want}")
        return ""

    # -- messages ---------------------------------------------------------------------

    def send(self, client: CheckClient) -> tuple[str, int]:
        """Send the next message from ``client``; (temp_id, id) once confirmed, else FAIL."""
        n = len(self.sent) + 1
        self.sent.append(Sent(f"{self.room}-t{n}", None, f"roombench check message {n} from {client.label}"))
        confirmed = self.sent[-1] = client.send(self.room, self.sent[-1], self.left())
        assert confirmed.id is not None  # client.send confirms with an id or raises Failed
        return confirmed.temp_id, confirmed.id

    def delivered(self, sender: CheckClient, receiver: CheckClient, n: int) -> dict[str, Any]:
        """``receiver``'s new_message of send number ``n`` (checked), else FAIL."""
        got = receiver.wait_message(self.sent[n].temp_id, self.left())
        whose = "its own message" if sender is receiver else f"{sender.label}'s message"
        if got is None:
            extra = " (the contract sends it to every member, the sender included)" if sender is receiver else ""
            raise Failed(f"client {receiver.label} got no {self.ev('new_message')!r} for {whose} within "
                         f"{self.timeout:g} s{extra}{receiver.hint()}")
        wrong = message_problems(self.profile, got, self.room, self.sent[n])
        if wrong:
            raise Failed(f"client {receiver.label}'s {self.ev('new_message')!r} for {whose}: {'; '.join(wrong)}")
        return got

    def confirm(self) -> str:
        temp_id, msg_id = self.send(self.clients[0])
        how = "ack" if self.profile.ack_mode == "callback" else f"own {self.ev('new_message')!r}"
        return f"{how} for {temp_id!r} with id {msg_id}"

    def fanout(self) -> str:
        a, b = self.clients
        if self.sent[0].id is None:
            raise Skipped("not checked: the first message was not confirmed")
        self.send(b)
        notes = []
        for sender, receiver, n in ((a, b, 0), (b, a, 1), (a, a, 0), (b, b, 1)):
            got = self.delivered(sender, receiver, n)
            if sender is not receiver:
                sender.server_id = got[self.f("sender_id")]
                if sender.server_id != sender.user_id:
                    notes.append(f"{sender.label} is {sender.server_id!r}, not the {self.f('user_id')!r} it sent")
        for client in self.clients:
            if client.inbox_problem():
                raise Failed(f"client {client.label} {client.inbox_problem()}")
        note = f" (note: {'; '.join(notes)}; roombench learns ids from the echo)" if notes else ""
        return f"A and B each got both messages, their own included, with all 6 fields, once{note}"

    def ids(self) -> str:
        a, b = self.clients
        for client in (a, b):
            if any(m.id is None for m in self.sent):
                raise Skipped("not checked: an earlier message was not confirmed")
            self.send(client)
        ids = [m.id for m in self.sent if m.id is not None]  # all of them: each send was confirmed
        if self.profile.opaque_ids:  # never compared by value: distinct is all one can ask
            if len(set(map(repr, ids))) < len(ids):
                raise Failed(f"ids in send order are {ids}: some id was given twice")
            return f"opaque ids, all distinct: {ids}"
        for n in range(1, len(ids)):
            if ids[n] <= ids[n - 1]:
                raise Failed(f"ids in send order are {ids}: message {n + 1} got {ids[n]}, not more than {ids[n - 1]} "
                             "(profile: id_order = \"opaque\" if the server's ids have no numeric order)")
        return f"ids in send order (each sent after the previous one was confirmed): {ids}"

    def typing(self) -> str:
        a, b = self.clients
        f_ch, f_user, ev = self.f("channel"), self.f("user_id"), self.ev("user_typing")
        a.transport.emit(self.ev("typing"), {f_ch: self.room})
        got = b.wait_for(ev, lambda d: isinstance(d, dict) and d.get(f_ch) == self.room, self.left())
        if got is None:
            raise Failed(f"client B got no {ev!r} within {self.timeout:g} s after A's {self.ev('typing')!r}{b.hint()}")
        if got.get(f_user) != a.server_id:
            raise Failed(f"{ev!r} {f_user!r} is {got.get(f_user)!r}, not the typist's {a.server_id!r} "
                         "(the sender_id of its messages)")
        if a.wait_for(ev, lambda d: True, self.left(0.3)) is not None:
            raise Failed(f"the typist got its own {ev!r} (the contract sends it to the other members only)")
        return f"B got {ev!r} with {f_user!r} {got.get(f_user)!r}; A did not"

    def read_receipt(self) -> str:
        a, b = self.clients
        ids = [m.id for m in self.sent if m.id is not None]
        if not ids:
            raise Skipped("not checked: no message was confirmed")
        f_ch, f_msg, f_user, ev = self.f("channel_id"), self.f("message_id"), self.f("user_id"), self.ev("message_read")
        b.transport.emit(self.ev("mark_read"), {f_ch: self.room, f_msg: ids[-1]})
        match = lambda d: isinstance(d, dict) and d.get(f_ch) == self.room and d.get(f_msg) == ids[-1]  # noqa: E731
        for client in (a, b):
            got = client.wait_for(ev, match, self.left())
            if got is None:
                whose = " of its own (the contract sends it to the whole room)" if client is b else ""
                raise Failed(f"client {client.label} got no {ev!r}{whose} within {self.timeout:g} s "
                             f"after B's {self.ev('mark_read')!r}{client.hint()}")
            if got.get(f_user) != b.server_id:
                raise Failed(f"{ev!r} {f_user!r} is {got.get(f_user)!r}, not the reader's {b.server_id!r}")
        return f"A and B got {ev!r} for id {ids[-1]} with {f_user!r} {b.server_id!r}"

    # -- REST backfill ----------------------------------------------------------------

    def reconnect(self) -> str:
        a, b = self.clients
        if any(m.id is None for m in self.sent):
            raise Skipped("not checked: an earlier message was not confirmed")
        seen = [d.get(self.f("id")) for ev, d in a.inbox if ev == self.ev("new_message") and isinstance(d, dict)]
        valid = [i for i in seen if id_ok(self.profile, i)]
        # opaque ids: the last one received is the newest (the lesson's lastMessageId)
        self.gap_after = (valid[-1] if valid else "") if self.profile.opaque_ids else max(valid, default=0)
        t0 = _now()
        a.transport.drop()
        if not a.lost.wait(self.left()):
            raise Failed("client A's connection did not end after drop()")
        self.missed = [self.send(b)[0], self.send(b)[0]]  # while A is away (it has not rejoined yet)
        if not a.back.wait(self.left()):
            raise Failed(f"client A did not reconnect within {self.timeout:g} s after the drop{a.hint()}")
        took = _now() - t0
        join = {self.f("room"): self.room}
        if self.profile.join_ack:
            self.join_ack(a, *a.request(self.ev("join"), join, self.left()), expect=self.sent[-1].id)
        else:
            a.transport.emit(self.ev("join"), join)
            gevent.sleep(min(0.3, self.left()))
        self.send(b)
        self.delivered(b, a, len(self.sent) - 1)
        return (f"dropped; reconnected in {1000 * took:.0f} ms; rejoined "
                f"({self.f('last_id')} {self.sent[-2].id}); live messages reach A again")

    def catch_up(self) -> str:
        items = self.page(self.gap_after, self.profile.backfill_limit)
        ids = self.in_order(items, f"after={self.gap_after}")
        if (self.gap_after in ids) if self.profile.opaque_ids else (ids and ids[0] <= self.gap_after):
            raise Failed(f"after={self.gap_after} returned ids {ids}: after is not honoured")
        temps = [m.get(self.f("temp_id")) for m in items]
        missing = [t for t in self.missed if t not in temps]
        if missing:
            raise Failed(f"after={self.gap_after} returned ids {ids} without {missing}, sent while A was away")
        return f"after={self.gap_after} brought the {len(self.missed)} messages sent while A was away (ids {ids[:2]})"

