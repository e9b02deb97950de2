"""The wire contract's names, in one place (docs/PROTOCOL.md is the prose version).

Code never spells an event or field name: it asks a :class:`Profile`. The default profile
is the contract itself; a foreign server with other names gets a profile of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Literal

AckMode = Literal["callback", "echo"]

#: canonical event name -> wire name (the contract's names)
DEFAULT_EVENTS: dict[str, str] = {
    "join": "join",
    "leave": "leave",
    "send_message": "send_message",
    "typing": "typing",
    "mark_read": "mark_read",
    "new_message": "new_message",
    "user_typing": "user_typing",
    "message_read": "message_read",
}

#: canonical field name -> wire name
DEFAULT_FIELDS: dict[str, str] = {
    "room": "room",  # join/leave
    "ok": "ok",  # join ack
    "last_id": "last_id",  # join ack
    "channel_id": "channel_id",  # send_message, new_message, mark_read, message_read
    "content": "content",
    "temp_id": "temp_id",
    "id": "id",
    "sender_id": "sender_id",
    "ts": "ts",
    "channel": "channel",  # typing, user_typing
    "user_id": "user_id",  # user_typing, message_read
    "message_id": "message_id",  # mark_read, message_read
    "token": "token",  # auth payload
}


@dataclass(frozen=True)
class Profile:
    """How one server spells the contract.

    ``backfill_url`` is a template relative to the server's base URL with the
    placeholders ``{channel_id}``, ``{after}`` and ``{limit}``; ``backfill_key`` is None
    when the response is a bare JSON list, else the key of the list in a JSON object.
    ``token_in`` says where the token goes: the Socket.IO ``auth`` payload, the URL
    query (``?token=``) or an ``Authorization: Bearer`` header on the handshake.
    """

    name: str = "default"
    path: str = "/socket.io/"
    namespace: str = "/"
    ack_mode: AckMode = "callback"
    join_ack: bool = True
    events: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_EVENTS))
    fields: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_FIELDS))
    backfill_url: str = "/channels/{channel_id}/messages?after={after}&limit={limit}"
    backfill_key: str | None = None
    backfill_limit: int = 500
    token_in: Literal["auth", "query", "header"] = "auth"

    def event(self, canonical: str) -> str:
        """The wire name of a contract event."""
        return self.events[canonical]

    def field(self, canonical: str) -> str:
        """The wire name of a contract payload field."""
        return self.fields[canonical]


DEFAULT_PROFILE = Profile()
