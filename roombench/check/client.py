"""The pieces of `roombench check`: a recording client, and what a correct message is.

Unlike a load session, :class:`CheckClient` keeps every event it receives, so a check can
ask "did anything like this arrive" with a timeout, and name what went wrong.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard

import gevent
import gevent.event

from roombench.wire.profile import PAYLOAD_FIELDS, Profile
from roombench.transport.base import Callbacks, ReconnectPolicy

from roombench.transport.registry import make_transport

__all__ = ["CheckClient", "Failed", "Sent", "Skipped", "id_ok", "is_id", "message_problems"]

_now = time.monotonic


class Failed(Exception):
    """A contract point failed; the message says why, in one line."""


class Skipped(Exception):
    """A contract point could not be checked; the message says why."""


class CheckClient:
    """One connection of the check: it records everything it receives; waits have timeouts.

    ``label`` names it in messages ("client A"); its ``user_id`` goes in the auth payload.
    Reconnects come quickly and without jitter, so a forced drop costs half a second.
    """

    def __init__(self, label: str, url: str, profile: Profile, token: str | None, timeout: float,
                 transport: str = "lean") -> None:
        self.label = label
        self.profile = profile
        self.user_id = f"rbcheck-{secrets.token_hex(3)}-{label}"
        self.server_id: Any = self.user_id  # what the server calls us; learned from our messages
        self.inbox: list[tuple[str, Any]] = []
        self.errors: list[str] = []
        self.lost = gevent.event.Event()
        self.back = gevent.event.Event()
        self._news = gevent.event.Event()
        handlers = Callbacks(self._on_connect, lambda _: self.lost.set(), self._on_event, self._on_error)
        self.transport = make_transport(
            transport, url, profile, handlers, token=token, auth_extra={profile.field("user_id"): self.user_id},
            reconnect=ReconnectPolicy(delay=0.5, delay_max=1.0, jitter=0.0), ack_timeout=timeout,
            connect_timeout=timeout)

    def _on_connect(self, again: bool) -> None:
        if again:
            self.back.set()

    def _on_event(self, event: str, data: Any) -> None:
        self.inbox.append((event, data))
        self._news.set()

    def _on_error(self, kind: str, detail: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {detail}")

    def wait_for(self, event: str, match: Callable[[Any], bool], timeout: float) -> Any:
        """The first received ``event`` whose payload ``match``es, or None after ``timeout``."""
        deadline, seen = _now() + timeout, 0
        while True:
            for ev, data in self.inbox[seen:]:
                if ev == event and match(data):
                    return data
            seen = len(self.inbox)
            left = deadline - _now()
            if left <= 0:
                return None
            self._news.clear()
            self._news.wait(left)

    def request(self, event: str, data: Any, timeout: float) -> tuple[Any, str | None]:
        """Emit with an ack and wait for it: (payload, None) or (None, "timeout"/"disconnected"/...)."""
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        if not self.transport.emit(event, data, lambda _, p, e: result.set((p, e))):
            return None, "not connected"
        try:
            return result.get(timeout=timeout + 0.5)
        except gevent.Timeout:
            return None, "timeout"

    def hint(self) -> str:
        """What the transport complained about, e.g. events the profile does not name."""
        if not self.errors:
            return ""
        return f" (client {self.label} saw: {'; '.join(dict.fromkeys(self.errors[:3]))})"

    def wait_message(self, temp_id: str, timeout: float) -> Any:
        """The first new_message carrying ``temp_id``, or None after ``timeout``."""
        f_temp = self.profile.field("temp_id")
        return self.wait_for(self.profile.event("new_message"),
                             lambda d: isinstance(d, dict) and d.get(f_temp) == temp_id, timeout)

    def send(self, room: str, draft: Sent, timeout: float) -> Sent:
        """Send ``draft`` to ``room``; it comes back with the id that confirmed it (the ack or
        the own echo, as the profile's ack_mode says), else :class:`Failed`."""
        f = self.profile.field
        data = {f("channel_id"): room, f("content"): draft.content, f("temp_id"): draft.temp_id}
        if self.profile.ack_mode == "callback":
            msg_id = self._ack_id(*self.request(self.profile.event("send_message"), data, timeout), draft, timeout)
        else:
            msg_id = self._echo_id(data, draft, timeout)
        return draft._replace(id=msg_id)

    def _ack_id(self, payload: Any, error: str | None, draft: Sent, timeout: float) -> Any:
        who, ev = f"client {self.label}", self.profile.event("send_message")
        f_id, f_temp = self.profile.field("id"), self.profile.field("temp_id")
        if error == "timeout":
            raise Failed(f"{who}: no {ev!r} ack within {timeout:.3g} s (ack_mode = \"callback\"; a server that "
                         f"confirms by echo needs ack_mode = \"echo\"){self.hint()}")
        if error is not None:
            raise Failed(f"{who}: no {ev!r} ack ({error}){self.hint()}")
        if isinstance(payload, dict) and f_id not in payload and "error" in payload:
            raise Failed(f"{who}: the server refused the message: {payload['error']!r:.100}")
        if not isinstance(payload, dict) or not id_ok(self.profile, payload.get(f_id)) \
                or payload.get(f_temp) != draft.temp_id:
            raise Failed(f"{who}: ack {payload!r:.80} is not {{{f_id!r}: {_id_kind(self.profile)}, "
                         f"{f_temp!r}: {draft.temp_id!r}}}{_id_hint(self.profile, payload, f_id)}")
        return payload[f_id]

    def _echo_id(self, data: dict[str, Any], draft: Sent, timeout: float) -> Any:
        who, ev, f_id = f"client {self.label}", self.profile.event("new_message"), self.profile.field("id")
        if not self.transport.emit(self.profile.event("send_message"), data):
            raise Failed(f"{who}: not connected")
        echo = self.wait_message(draft.temp_id, timeout)
        if echo is None:
            raise Failed(f"{who}: no {ev!r} of its own carrying its temp_id within {timeout:.3g} s (ack_mode = "
                         f"\"echo\"; a server that acks instead needs ack_mode = \"callback\"){self.hint()}")
        if not id_ok(self.profile, echo.get(f_id)):
            raise Failed(f"{who}: own {ev!r} {f_id!r} is {echo.get(f_id)!r}, not {_id_kind(self.profile)}"
                         f"{_id_hint(self.profile, echo, f_id)}")
        return echo[f_id]

    def inbox_problem(self) -> str:
        """"" unless a new_message so far was no message object, or came twice."""
        ev, f_temp = self.profile.event("new_message"), self.profile.field("temp_id")
        payloads = [d for e, d in self.inbox if e == ev]
        bad = [d for d in payloads if not isinstance(d, dict)]
        if bad:
            return f"got a {ev!r} that is no message: {bad[0]!r:.60}"
        temps = [d.get(f_temp) for d in payloads]
        twice = sorted({t for t in temps if temps.count(t) > 1})
        return f"got {ev!r} for {twice[0]!r} more than once" if twice else ""


class Sent(NamedTuple):
    """A message the check sent: its temp_id, the id that confirmed it (None: not yet), its content."""

    temp_id: str
    id: Any  # None: not yet
    content: str


def is_id(value: Any) -> TypeGuard[int]:
    """A message id: a positive integer (bool is an int subclass, and no id)."""
    return type(value) is int and value > 0


def id_ok(profile: Profile, value: Any) -> bool:
    """A message id under ``profile``: a positive int, or with opaque ids any string or number."""
    return profile.is_id(value) if profile.opaque_ids else is_id(value)


def _id_kind(profile: Profile) -> str:
    return "<string or number>" if profile.opaque_ids else "<positive int>"


def _id_hint(profile: Profile, payload: Any, f_id: str) -> str:
    """Name the profile key when the id is there but not an int (a foreign id scheme)."""
    value = payload.get(f_id) if isinstance(payload, dict) else None
    if not profile.opaque_ids and isinstance(value, (str, float)) and value != "":
        return ' (profile: id_order = "opaque" for string ids)'
    return ""


def _ts_problem(profile: Profile, ts: Any, f_ts: str) -> str:
    """"" unless ``ts`` is no number, or looks like the other unit than ``ts_unit`` says."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return f"{f_ts!r} {ts!r} is not a number"
    if profile.ts_unit == "s" and ts > 1e11:
        return f'{f_ts!r} {ts!r} looks like milliseconds (profile: ts_unit = "ms")'
    if profile.ts_unit == "ms" and 0 < ts < 1e11:
        return f'{f_ts!r} {ts!r} looks like seconds (profile: ts_unit = "s")'
    return ""


def message_problems(profile: Profile, m: Any, room: str, sent: Sent) -> list[str]:
    """What is wrong with ``m`` as the new_message (or backfilled message) of ``sent`` in ``room``."""
    if not isinstance(m, dict):
        return [f"payload is {type(m).__name__}, not an object"]
    f = profile.field
    missing = [f(k) for k in PAYLOAD_FIELDS["new_message"] if f(k) not in m]
    if missing:
        return ["lacks " + ", ".join(map(repr, missing))]
    ch, msg_id, ts, temp = m[f("channel_id")], m[f("id")], m[f("ts")], m[f("temp_id")]
    wrong = [(ch == room, f"{f('channel_id')!r} is {ch!r}, not {room!r}"),
             (m[f("content")] == sent.content, f"{f('content')!r} is not the content sent"),
             (temp == sent.temp_id, f"{f('temp_id')!r} is {temp!r}, not {sent.temp_id!r}"),
             (id_ok(profile, msg_id), f"{f('id')!r} {msg_id!r} is not {_id_kind(profile)}"
                                      + _id_hint(profile, m, f("id"))),
             (sent.id is None or msg_id == sent.id, f"{f('id')!r} {msg_id!r} is not the confirmed id {sent.id}"),
             (not _ts_problem(profile, ts, f("ts")), _ts_problem(profile, ts, f("ts"))),
             (m[f("sender_id")] not in (None, ""), f"{f('sender_id')!r} is empty")]
    return [why for good, why in wrong if not good]
