"""The "py-renamed" server: the reference server speaking the contract under a profile's names.

It proves that a differently named server is measurable without code changes: everything
on the wire follows a profile file (``roombench/profiles/renamed-example.toml`` by default)
— event and field names, the Socket.IO path and namespace, where the token travels, the
backfill URL and its wrapped response — while the behaviour (and every
:class:`~roombench.servers.reference.Faults` option) is the reference server's own.

How: the reference handlers are registered on a :class:`RenamingServer`, an ``AsyncServer``
that hands them the contract's names and puts the profile's names on the wire; the REST
side rewrites the profile's backfill URL to the reference route and wraps the answer. The
reference module itself is not touched. The profile is the one piece of roombench shared
with the generator (docs/ARCHITECTURE.md, "servers/").
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, parse_qsl, urlencode

import orjson
import socketio

from roombench.wire.profile import PROFILES_DIR, Profile, load_profile
from roombench.servers.reference import Faults, RoomStore, _error, _json, _LiveHandlers, _RestApp

__all__ = ["Faults", "ProfileRest", "RenamingServer", "create_app", "DEFAULT_PROFILE_PATH"]

DEFAULT_PROFILE_PATH = PROFILES_DIR / "renamed-example.toml"

Handler = Callable[..., Awaitable[Any]]


def create_app(token: str | None = None, faults: Faults | None = None,
               profile_path: str | Path = DEFAULT_PROFILE_PATH) -> socketio.ASGIApp:
    """Build the reference server under the profile at ``profile_path`` (an ASGI app).

    ``token``: required on connect where the profile's ``token_in`` says, and as
    ``Authorization: Bearer`` on the backfill. ``faults``: as for the reference server.
    """
    profile = load_profile(profile_path)
    store = RoomStore()
    sio = RenamingServer(profile, async_mode="asgi", cors_allowed_origins="*", transports=["websocket"],
                         logger=False, engineio_logger=False)
    _LiveHandlers(sio, store, token, faults or Faults())
    rest = _RenamedRest(profile, store, token, faults or Faults())
    return socketio.ASGIApp(sio, other_asgi_app=rest, socketio_path=profile.path.strip("/"),
                            on_startup=partial(store.start, sio), on_shutdown=store.close)


class RenamingServer(socketio.AsyncServer):
    """An AsyncServer whose handlers see the contract's names and whose clients see the profile's.

    Handlers registered with :meth:`on` under canonical event names receive payloads with
    canonical field names and may return canonical acks; :meth:`emit` takes canonical names.
    Only the profile's namespace accepts connections.
    """

    def __init__(self, profile: Profile, **kwargs: Any) -> None:
        super().__init__(namespaces=[profile.namespace], **kwargs)
        self.profile = profile
        self._to_wire = dict(profile.fields)

    # -- names in -------------------------------------------------------------------------

    def on(self, event: str, handler: Handler | None = None, namespace: str | None = None) -> Any:
        """Register ``handler`` for a canonical event (or connect/disconnect) in the profile's namespace."""
        if handler is None:
            return lambda h: self.on(event, h, namespace)
        wire = self.profile.events.get(event, event)
        if event == "connect":
            wrapped = self._connect_wrapper(handler)
        elif event == "disconnect":
            wrapped = handler
        else:
            wrapped = self._event_wrapper(handler)
        return super().on(wire, wrapped, namespace or self.profile.namespace)

    def _event_wrapper(self, handler: Handler) -> Handler:
        async def renamed(sid: str, data: Any = None) -> Any:
            return self.outgoing(await handler(sid, self.incoming(data)))

        return renamed

    def _connect_wrapper(self, handler: Handler) -> Handler:
        async def renamed(sid: str, environ: dict[str, Any], auth: Any = None) -> Any:
            return await handler(sid, environ, self.canonical_auth(environ, auth))

        return renamed

    def incoming(self, data: Any) -> Any:
        """A client payload with canonical field names (a wire name shared by several
        canonical fields fills them all; handlers read only the ones they need)."""
        if not isinstance(data, dict):
            return data
        return {canonical: data[wire] for canonical, wire in self.profile.fields.items() if wire in data}

    def canonical_auth(self, environ: dict[str, Any], auth: Any) -> dict[str, Any]:
        """The auth payload as the reference handler expects it, wherever the profile puts the token."""
        auth = auth if isinstance(auth, dict) else {}
        out = {"user_id": auth.get(self.profile.field("user_id"))}
        where = self.profile.token_in
        if where == "auth":
            out["token"] = auth.get(self.profile.field("token"))
        elif where == "query":
            out["token"] = (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[-1]
        else:
            header = environ.get("HTTP_AUTHORIZATION", "")
            out["token"] = header[7:] if header.startswith("Bearer ") else None
        return out

    # -- names out ------------------------------------------------------------------------

    def outgoing(self, data: Any) -> Any:
        """A canonical payload or ack with the profile's field names (other keys unchanged)."""
        if not isinstance(data, dict):
            return data
        return {self._to_wire.get(key, key): value for key, value in data.items()}

    async def emit(self, event: str, data: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Emit a canonical event in the profile's names and namespace."""
        kwargs["namespace"] = kwargs.get("namespace") or self.profile.namespace
        await super().emit(self.profile.events.get(event, event), self.outgoing(data), **kwargs)

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Join a room in the profile's namespace."""
        await super().enter_room(sid, room, namespace or self.profile.namespace)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Leave a room in the profile's namespace."""
        await super().leave_room(sid, room, namespace or self.profile.namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms of ``sid`` in the profile's namespace."""
        return super().rooms(sid, namespace or self.profile.namespace)


class BackfillRoute:
    """Matches requests against a profile's backfill URL template.

    ``{channel_id}`` (and ``{after}`` / ``{limit}``) may sit in the path; query
    parameters whose value is a placeholder name it (``since={after}``).
    """

    def __init__(self, template: str) -> None:
        path, _, query = template.partition("?")
        pattern = ""
        for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", path):
            pattern += re.escape(literal) + (f"(?P<{name}>[^/]+)" if name else "")
        self.path = re.compile(pattern.encode() + b"$")
        self.params = {key: value[1:-1] for key, value in parse_qsl(query) if value.startswith("{")}

    def match(self, raw_path: bytes, query_string: bytes) -> tuple[bytes, dict[str, str]] | None:
        """(percent-encoded channel id, {"after": ..., "limit": ...}) or None if not this route."""
        m = self.path.match(raw_path)
        if m is None:
            return None
        values = {k: v.decode("latin-1") for k, v in m.groupdict().items() if k != "channel_id"}
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if key in self.params:
                values[self.params[key]] = value
        return m.group("channel_id"), values


class ProfileRest(_RestApp):
    """The reference REST app's ``/healthz``, and the profile's backfill URL answered by
    :meth:`answer_backfill` (a subclass's); anything else is 404."""

    def __init__(self, profile: Profile, store: RoomStore, token: str | None, faults: Faults) -> None:
        super().__init__(store, token, faults)
        self.profile = profile
        self.backfill = BackfillRoute(profile.backfill_url)

    async def route(self, scope: dict[str, Any]) -> tuple[int, bytes, bytes]:
        """Answer one request: (status, body, content type)."""
        raw = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        if raw == b"/healthz":
            return await super().route(scope)
        found = self.backfill.match(raw, scope.get("query_string", b""))
        if found is None:
            return _json(404, _error("not found"))
        return await self.answer_backfill(scope, *found)

    async def answer_backfill(self, scope: dict[str, Any], channel: bytes,
                              query: dict[str, str]) -> tuple[int, bytes, bytes]:
        """One backfill request: ``channel`` percent-encoded, ``query`` by placeholder name."""
        raise NotImplementedError


class _RenamedRest(ProfileRest):
    """The reference REST app behind the profile's backfill URL, answering in its shape."""

    async def answer_backfill(self, scope: dict[str, Any], channel: bytes,
                              query: dict[str, str]) -> tuple[int, bytes, bytes]:
        inner = dict(scope, raw_path=b"/channels/" + channel + b"/messages", path="",
                     query_string=urlencode(query).encode())
        status, body, content_type = await _RestApp.route(self, inner)  # the reference route, not ours
        if status != 200 or not content_type.startswith(b"application/json"):
            return status, body, content_type
        to_wire = self.profile.fields
        messages = [{to_wire.get(k, k): v for k, v in m.items()} for m in orjson.loads(body)]
        key = self.profile.backfill_key
        return status, orjson.dumps({key: messages} if key else messages), content_type
