"""`roombench check URL --suggest-profile`: propose a profile's field names from one message.

Given the event names (the default ones, or a partial profile's), one client joins a fresh
room and sends one message with unmistakable values; the fields of what comes back (the
ack and the client's own new_message) are matched by value: the key holding the temp_id
is ``temp_id``, the one holding the content is ``content``, the room is ``channel_id``, the
key the ack and the echo share (with the same value) is ``id``, a number near now is
``ts``, and the string left over is ``sender_id``. The result is printed as a ready profile.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

from roombench.check.client import CheckClient, Failed
from roombench.exceptions import ConnectFailed
from roombench.wire.profile import Profile

__all__ = ["Suggestion", "suggest", "to_toml"]


class Suggestion:
    """The profile proposed, and notes on what could not be told apart or was not seen."""

    def __init__(self, profile: Profile, notes: list[str]) -> None:
        self.profile = profile
        self.notes = notes


def suggest(url: str, profile: Profile, token: str | None, timeout: float = 3.0,
            transport: str = "lean") -> Suggestion:
    """Send one message to ``url`` as ``profile`` names events; propose its field names.

    Raises :class:`Failed` (one line) when nothing came back to learn from."""
    client = CheckClient("A", url, profile, token, timeout, transport)
    try:
        client.transport.connect()
    except ConnectFailed as exc:
        raise Failed(f"cannot connect: {exc} (profile: path, namespace, token_in)") from None
    try:
        return _Probe(client, profile, timeout).run()
    finally:
        client.transport.close()


class _Probe:
    def __init__(self, client: CheckClient, profile: Profile, timeout: float) -> None:
        self.c, self.p, self.timeout = client, profile, timeout
        tag = secrets.token_hex(4)
        self.room, self.temp, self.content = f"rbsuggest-{tag}", f"rbsuggest-{tag}-t1", f"rbsuggest content {tag}"
        self.fields = dict(profile.fields)
        self.top: dict[str, Any] = {}
        self.notes: list[str] = []
        self.named: set[str] = set()

    def run(self) -> Suggestion:
        self.join()
        ack = self.send()
        echo = self.echo()
        self.match(echo, ack)
        self.notes.append("not learned from one message (kept from the profile): channel, user_id, message_id "
                          "(typing and read receipts) and [backfill]; `roombench check` tells what is still wrong")
        return Suggestion(replace(self.p, fields=self.fields, **self.top), self.notes)

    def join(self) -> None:
        f, ev = self.p.field, self.p.event
        if not self.p.join_ack:
            self.c.transport.emit(ev("join"), {f("room"): self.room})
            time.sleep(0.3)
            return
        payload, error = self.c.request(ev("join"), {f("room"): self.room}, self.timeout)
        if error is not None or not isinstance(payload, dict):
            self.notes.append(f"join {ev('join')!r} was not acked ({error or payload!r:.40}): join_ack = false?")
            self.top["join_ack"] = False
            return
        for key, value in payload.items():
            if value is True:
                self.fields["ok"] = key
            elif value is None or isinstance(value, (int, str)):
                self.fields["last_id"] = key

    def send(self) -> dict[str, Any] | None:
        f, ev = self.p.field, self.p.event
        data = {f("channel_id"): self.room, f("content"): self.content, f("temp_id"): self.temp}
        payload, error = self.c.request(ev("send_message"), data, min(self.timeout, 1.5))
        if error is None and isinstance(payload, dict):
            self.top["ack_mode"] = "callback"
            return payload
        self.top["ack_mode"] = "echo"
        self.notes.append(f"{ev('send_message')!r} was not acked ({error}): ack_mode = \"echo\"")
        return None

    def echo(self) -> dict[str, Any]:
        """The message as it came back: under the new_message name, or any event carrying the temp_id."""
        carries = lambda d: isinstance(d, dict) and self.temp in d.values()  # noqa: E731
        got = self.c.wait_for(self.p.event("new_message"), carries, self.timeout)
        if got is not None:
            return got
        for event, data in self.c.inbox:
            if carries(data):
                self.notes.append(f"the message came back as {event!r}: [events] new_message = {event!r}")
                self.top["events"] = {**self.p.events, "new_message": event}
                return data
        raise Failed(f"no event carrying the temp_id came back within {self.timeout:g} s; are [events] "
                     f"send_message = {self.p.event('send_message')!r} and the send fields "
                     f"{self.p.field('channel_id')!r}, {self.p.field('content')!r}, {self.p.field('temp_id')!r} "
                     "what the server takes?")

    def match(self, echo: dict[str, Any], ack: dict[str, Any] | None) -> None:
        now, left = time.time(), dict(echo)
        for canonical, value in (("temp_id", self.temp), ("content", self.content), ("channel_id", self.room)):
            key = next((k for k, v in left.items() if v == value), None)
            if key is None:
                self.notes.append(f"no field of the echo holds the {canonical}")
                continue
            self.name(canonical, key)
            del left[key]
        shared = [k for k, v in (ack or {}).items() if k in left and left[k] == v and v != self.temp]
        if shared:
            self.name("id", shared[0])
            msg_id = left.pop(shared[0])
            self.top["id_order"] = "int" if type(msg_id) is int else "opaque"
        for key, value in list(left.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                for unit, scale in (("s", 1.0), ("ms", 1000.0)):
                    if abs(value / scale - now) < 3600:
                        self.name("ts", key)
                        self.top["ts_unit"] = unit
                        del left[key]
        if "id" not in self.named:
            ints = [k for k, v in left.items() if type(v) is int]
            if ints:
                self.name("id", ints[0])
                del left[ints[0]]
                self.notes.append(f"guessed id = {self.fields['id']!r} (the ack did not repeat it)")
        strings = [k for k, v in left.items() if isinstance(v, str) and v]
        if strings:
            self.name("sender_id", strings[0])
            if len(strings) > 1:
                self.notes.append(f"sender_id is one of {strings}; took {strings[0]!r}")

    def name(self, canonical: str, key: str) -> None:
        self.named.add(canonical)
        if canonical in ("channel_id",):
            # the same wire name usually serves the room in every payload
            for other in ("room", "channel"):
                if self.fields[other] == self.fields["channel_id"]:
                    self.fields[other] = key
        if canonical == "id" and self.fields["message_id"] == self.fields["id"]:
            self.fields["message_id"] = key
        if self.fields[canonical] != key and canonical in ("channel_id", "content", "temp_id"):
            self.notes.append(f"the server sends {canonical} as {key!r} but was sent {self.fields[canonical]!r}: "
                              "one profile name serves both directions; check which the server takes")
        self.fields[canonical] = key


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def to_toml(s: Suggestion) -> str:
    """The suggestion as a profile file, notes as comments at the top."""
    d = s.profile.to_dict()
    lines = ["# proposed by `roombench check --suggest-profile` from one message; review before use"]
    lines += [f"# note: {n}" for n in s.notes]
    for key in ("name", "path", "ws_path", "namespace", "ack_mode", "join_ack", "token_in", "token_name",
                "token_value", "id_order", "ts_unit"):
        if d.get(key) not in ("", None):
            lines.append(f"{key} = {_toml_value(d[key])}")
    for table in ("events", "fields"):
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[table].items()]
    lines += ["", "[backfill]"] + [f"{k} = {_toml_value(v)}" for k, v in d["backfill"].items()]
    return "\n".join(lines) + "\n"
