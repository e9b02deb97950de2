"""The wire contract's names, in one place (docs/PROTOCOL.md is the prose version).

Code never spells an event or field name: it asks a :class:`Profile`. The default profile
is the contract itself; a foreign server with other names gets a profile of its own.
"""

from __future__ import annotations

import functools

import string
import tomllib
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Literal

from roombench.exceptions import UsageError

AckMode = Literal["callback", "echo"]
TokenIn = Literal["auth", "query", "header"]
BackfillAuth = Literal["header", "query", "none"]
IdOrder = Literal["int", "opaque"]
TsUnit = Literal["s", "ms"]
#: the client transports by name (roombench.transport.registry): lean and compat speak Socket.IO, ws a plain WebSocket envelope
Transport = Literal["lean", "compat", "ws"]

#: the value of ``--ack`` that means "whatever the profile's ack_mode says"
ACK_FROM_PROFILE = "profile"

#: where the shipped profiles live (``--profile NAME`` finds them by name)
PROFILES_DIR = Path(__file__).parent / "profiles"

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

#: events the client sends / the server sends; names must be unique within each direction
#: (a server may well use one name both ways, e.g. "typing" in and out)
CLIENT_EVENTS = ("join", "leave", "send_message", "typing", "mark_read")
SERVER_EVENTS = ("new_message", "user_typing", "message_read")

#: the canonical fields of every payload; wire names must be unique within one payload,
#: but may repeat across payloads (room, channel_id and channel may all be "roomId")
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "auth": ("token", "user_id"),
    "join ack": ("ok", "last_id"),
    "send_message": ("channel_id", "content", "temp_id"),
    "send_message ack": ("id", "temp_id"),
    "mark_read": ("channel_id", "message_id"),
    "new_message": ("id", "channel_id", "sender_id", "content", "temp_id", "ts"),
    "user_typing": ("channel", "user_id"),
    "message_read": ("channel_id", "message_id", "user_id"),
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
    #: the plain WebSocket endpoint's path (``--transport ws``)
    ws_path: str = "/ws"
    namespace: str = "/"
    ack_mode: AckMode = "callback"
    join_ack: bool = True
    events: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_EVENTS))
    fields: dict[str, str] = dc_field(default_factory=lambda: dict(DEFAULT_FIELDS))
    backfill_url: str = "/channels/{channel_id}/messages?after={after}&limit={limit}"
    backfill_key: str | None = None
    backfill_limit: int = 500
    token_in: TokenIn = "auth"
    #: query parameter or header name of the socket token (None: "token" in the query,
    #: "Authorization" as a header); the auth payload key is ``fields.token``
    token_name: str | None = None
    #: value template of the socket token in a header (None: "Bearer {token}") or query
    token_value: str | None = None
    #: "int": ids are positive integers increasing per channel; "opaque": any JSON string
    #: or number, the server's order is authoritative (never compared by value)
    id_order: IdOrder = "int"
    ts_unit: TsUnit = "s"
    #: how the REST backfill carries the token: a header, a query parameter, or not at all
    backfill_auth: BackfillAuth = "header"
    backfill_auth_name: str = "Authorization"
    backfill_auth_value: str = "Bearer {token}"
    backfill_headers: dict[str, str] = dc_field(default_factory=dict)
    #: dotted path to the next page's cursor in a backfill answer ("" = page by last id)
    backfill_next: str = ""
    #: most bytes one backfill page may have: a larger answer is refused, read no further
    backfill_max_bytes: int = 8 * 1024 * 1024
    #: the file this profile was loaded from ("" for the built-in default)
    source: str = ""

    @functools.cached_property
    def wire_events(self) -> frozenset[str]:
        """Every event's wire name: what a server may send (computed once per profile)."""
        return frozenset(self.events.values())

    @functools.cached_property
    def opaque_ids(self) -> bool:
        """True when message ids are opaque (``id_order = "opaque"``); read per received
        message, so computed once (then a plain attribute lookup)."""
        return self.id_order == "opaque"

    @property
    def no_id(self) -> int | str:
        """The ``after`` that means "from the start": 0 for int ids, "" for opaque ones."""
        return "" if self.opaque_ids else 0

    def is_id(self, value: Any) -> bool:
        """Whether ``value`` can be a message id under this profile (bool never is)."""
        t = type(value)
        return t is int or (self.opaque_ids and t in (str, float) and value != "")

    def socket_token(self, token: str) -> tuple[str, str]:
        """(name, value) of the socket token for ``token_in`` "query" or "header"."""
        if self.token_in == "header":
            name, value = self.token_name or "Authorization", self.token_value or "Bearer {token}"
        else:
            name, value = self.token_name or self.field("token"), self.token_value or "{token}"
        return name, value.replace("{token}", token)

    def backfill_credentials(self, token: str | None) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query parameters) every backfill request carries: the static
        ``headers`` plus the token where ``[backfill] auth`` says."""
        headers, params = dict(self.backfill_headers), {}
        if token and self.backfill_auth != "none":
            value = self.backfill_auth_value.replace("{token}", token)
            (headers if self.backfill_auth == "header" else params)[self.backfill_auth_name] = value
        return headers, params

    def event(self, canonical: str) -> str:
        """The wire name of a contract event."""
        return self.events[canonical]

    def field(self, canonical: str) -> str:
        """The wire name of a contract payload field."""
        return self.fields[canonical]

    def ack_for(self, requested: str | None) -> AckMode:
        """The confirmation to measure: ``requested`` ("callback"/"echo") when the user
        chose one, else (None, "" or ``ACK_FROM_PROFILE``) this profile's ``ack_mode``."""
        if requested in ("callback", "echo"):
            return requested  # type: ignore[return-value]
        return self.ack_mode

    def speaks_like(self, other: Profile) -> bool:
        """True when a server of ``other`` understands a client of this profile (same
        names, path, namespace, token placement and backfill; ack mode, limit, name aside)."""
        keys = ("path", "ws_path", "namespace", "join_ack", "events", "fields", "backfill_url", "backfill_key", "token_in",
                "token_name", "token_value", "id_order", "backfill_auth", "backfill_auth_name", "backfill_auth_value",
                "backfill_headers", "backfill_next")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the layout of a profile file, plus ``source``; for summary metadata."""
        return {
            "name": self.name, "source": self.source, "path": self.path, "ws_path": self.ws_path,
            "namespace": self.namespace,
            "ack_mode": self.ack_mode, "join_ack": self.join_ack, "token_in": self.token_in,
            "token_name": self.token_name or "", "token_value": self.token_value or "",
            "id_order": self.id_order, "ts_unit": self.ts_unit,
            "events": dict(self.events), "fields": dict(self.fields),
            "backfill": {"url": self.backfill_url, "key": self.backfill_key or "", "limit": self.backfill_limit,
                         "auth": self.backfill_auth, "auth_name": self.backfill_auth_name,
                         "auth_value": self.backfill_auth_value, "headers": dict(self.backfill_headers),
                         "next": self.backfill_next},
        }


DEFAULT_PROFILE = Profile()


# -- profile files (TOML) -----------------------------------------------------------------

#: top-level keys of a profile file and their TOML types
_TOP: dict[str, type] = {
    "name": str, "path": str, "ws_path": str, "namespace": str, "ack_mode": str, "join_ack": bool, "token_in": str,
    "token_name": str, "token_value": str, "id_order": str, "ts_unit": str, "events": dict, "fields": dict, "backfill": dict,
}
_BACKFILL: dict[str, type] = {"url": str, "key": str, "limit": int, "auth": str, "auth_name": str, "auth_value": str,
                               "headers": dict, "next": str, "max_bytes": int}
_CHOICES: dict[str, tuple[str, ...]] = {"ack_mode": ("callback", "echo"), "token_in": ("auth", "query", "header"),
                                        "id_order": ("int", "opaque"), "ts_unit": ("s", "ms"),
                                        "auth": ("header", "query", "none")}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", dict: "a table", float: "a number",
               list: "an array"}
_URL_PLACEHOLDERS = ("channel_id", "after", "limit", "cursor")


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in ``roombench/profiles/``."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def find_profile(path_or_name: str | Path) -> Path:
    """The profile file for a path, or for the name of a shipped profile ("renamed-example")."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path.resolve()
    if path.exists():
        raise UsageError(f"profile {str(path)!r} is not a file")
    if len(path.parts) == 1:
        shipped = PROFILES_DIR / (path.name if path.suffix == ".toml" else path.name + ".toml")
        if shipped.is_file():
            return shipped
    known = ", ".join(builtin_profiles())
    raise UsageError(f"no profile file {str(path_or_name)!r} (shipped profiles, usable by name: {known})")


def load_profile(path_or_name: str | Path) -> Profile:
    """Read a profile TOML file (format: docs/PROTOCOL.md, "Profiles"); UsageError naming
    the file, the key and what is allowed when it is unreadable or wrong. Keys left out
    keep the contract's defaults."""
    path = find_profile(path_or_name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"profile {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"profile {path}: not valid TOML: {exc}") from None
    return _Reader(path).read(raw)


class _Reader:
    """Checks one parsed profile file key by key; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> UsageError:
        return UsageError(f"profile {self.path}: {message}")

    def read(self, raw: dict[str, Any]) -> Profile:
        self.check_keys(raw, _TOP, "top-level key", "")
        backfill = raw.get("backfill", {})
        self.check_keys(backfill, _BACKFILL, "key in [backfill]", "backfill.")
        d = DEFAULT_PROFILE
        profile = Profile(
            name=self.non_empty(raw.get("name", self.path.stem), "name"),
            path=self.sio_path(raw.get("path", d.path)),
            ws_path=self.ws_path(raw.get("ws_path", d.ws_path)),
            namespace=self.namespace(raw.get("namespace", d.namespace)),
            ack_mode=raw.get("ack_mode", d.ack_mode),
            join_ack=raw.get("join_ack", d.join_ack),
            token_in=raw.get("token_in", d.token_in),
            token_name=self.optional(raw, "token_name"),
            token_value=self.optional(raw, "token_value"),
            id_order=raw.get("id_order", d.id_order),
            ts_unit=raw.get("ts_unit", d.ts_unit),
            events=self.names(raw.get("events", {}), DEFAULT_EVENTS, "events", "contract event"),
            fields=self.names(raw.get("fields", {}), DEFAULT_FIELDS, "fields", "contract field"),
            backfill_url=self.url(backfill.get("url", d.backfill_url)),
            backfill_key=backfill.get("key", "") or None,
            backfill_limit=self.limit(backfill.get("limit", d.backfill_limit)),
            backfill_auth=backfill.get("auth", d.backfill_auth),
            backfill_auth_name=self.non_empty(backfill.get("auth_name", d.backfill_auth_name), "backfill.auth_name"),
            backfill_auth_value=backfill.get("auth_value", d.backfill_auth_value),
            backfill_headers=self.headers(backfill.get("headers", {})),
            backfill_next=backfill.get("next", d.backfill_next),
            backfill_max_bytes=self.max_bytes(backfill.get("max_bytes", d.backfill_max_bytes)),
            source=str(self.path),
        )
        self.unique(profile)
        return profile

    def check_keys(self, table: dict[str, Any], spec: dict[str, type], what: str, prefix: str) -> None:
        for key, value in table.items():
            if key not in spec:
                raise self.fail(f"unknown {what} {key!r}; allowed: {', '.join(spec)}")
            want = spec[key]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                got = _TYPE_NAMES.get(type(value), type(value).__name__)
                raise self.fail(f"{prefix}{key} must be {_TYPE_NAMES[want]}, got {got} {value!r:.40}")
            if key in _CHOICES and value not in _CHOICES[key]:
                raise self.fail(f"{key} must be one of {', '.join(_CHOICES[key])}; got {value!r}")

    def optional(self, raw: dict[str, Any], key: str) -> str | None:
        value = raw.get(key)
        return self.non_empty(value, key) if value is not None else None

    def headers(self, table: dict[str, Any]) -> dict[str, str]:
        for name, value in table.items():
            if not isinstance(value, str):
                raise self.fail(f"backfill.headers.{name} must be a string, got {value!r:.40}")
        return dict(table)

    def non_empty(self, value: str, key: str) -> str:
        if not value.strip():
            raise self.fail(f"{key} must not be empty")
        return value

    def sio_path(self, value: str) -> str:
        inner = value.strip("/")
        if not inner or any(c in value for c in "?# "):
            raise self.fail(f"path must be the Socket.IO path, like \"/socket.io/\"; got {value!r}")
        return "/" + inner + "/"

    def ws_path(self, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# "):
            raise self.fail(f"ws_path must be the plain WebSocket endpoint's path, like \"/ws\"; got {value!r}")
        return value

    def namespace(self, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in ",?# "):
            raise self.fail(f"namespace must start with \"/\" (\"/\" is the default namespace); got {value!r}")
        return value

    def names(self, table: dict[str, Any], defaults: dict[str, str], section: str, what: str) -> dict[str, str]:
        out = dict(defaults)
        for key, value in table.items():
            if key not in defaults:
                raise self.fail(f"[{section}] {key!r} is not a {what}; allowed: {', '.join(defaults)}")
            if not isinstance(value, str) or not value:
                raise self.fail(f"[{section}] {key} must be a non-empty string, got {value!r:.40}")
            out[key] = value
        return out

    def url(self, value: str) -> str:
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise self.fail(f"backfill.url {value!r} is not a valid template: {exc}") from None
        unknown = used - set(_URL_PLACEHOLDERS)
        if unknown:
            raise self.fail(f"backfill.url has unknown placeholder(s) {', '.join(sorted(unknown))}; "
                            "allowed: {channel_id}, {after}, {limit}, {cursor}")
        if not value.startswith("/") or not {"channel_id", "after"} <= used:
            raise self.fail(f"backfill.url must start with \"/\" and contain {{channel_id}} and {{after}}; got {value!r}")
        return value

    def limit(self, value: int) -> int:
        if value < 1:
            raise self.fail(f"backfill.limit must be >= 1, got {value}")
        return value

    def max_bytes(self, value: int) -> int:
        if value < 1024:
            raise self.fail(f"backfill.max_bytes must be >= 1024, got {value}")
        return value

    def unique(self, p: Profile) -> None:
        for group in (CLIENT_EVENTS, SERVER_EVENTS):
            self.no_clash([(k, p.events[k]) for k in group], "events", "events the " +
                          ("client" if group is CLIENT_EVENTS else "server") + " sends")
        for payload, keys in PAYLOAD_FIELDS.items():
            self.no_clash([(k, p.fields[k]) for k in keys], "fields", f"fields of one {payload} payload")

    def no_clash(self, pairs: list[tuple[str, str]], section: str, what: str) -> None:
        seen: dict[str, str] = {}
        for canonical, wire in pairs:
            if wire in seen:
                raise self.fail(f"[{section}] {seen[wire]} and {canonical} are both {wire!r}, "
                                f"but {what} need distinct names")
            seen[wire] = canonical


def ack_follows_profile(parser: Any) -> None:
    """Give an argparse parser's ``--ack`` the extra choice (and default) ``profile``:
    measure the confirmation the profile's ``ack_mode`` names unless the user picks one.

    Resolve the parsed value with :meth:`Profile.ack_for` before building a Scenario.
    """
    for action in parser._actions:  # argparse has no public way to amend an option
        if action.dest == "ack":
            action.choices = [ACK_FROM_PROFILE, "callback", "echo"]
            action.default = ACK_FROM_PROFILE
            action.help = ("confirmation: profile (default: the profile's ack_mode), callback (Socket.IO ack) "
                           "or echo (own new_message with the temp_id)")
