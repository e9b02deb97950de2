"""A quick synchronous check that a target answers Socket.IO before a run starts.

So that a wrong URL, a refused port or a wrong token costs one clear line and exit 2,
not a run full of counted connect errors.
"""

from __future__ import annotations

import socket
from urllib.parse import urlencode, urlsplit

import orjson
import websocket

from .exceptions import ConnectFailed, UsageError
from .protocol import DEFAULT_PROFILE, Profile


def ws_url(base: str, profile: Profile, token: str | None) -> str:
    """The Engine.IO websocket URL for an http(s)/ws(s) base URL; UsageError if malformed."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise UsageError(f"bad URL {base!r}: expected http://HOST:PORT")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"bad URL {base!r}: the port is not a number") from None
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    query = {"EIO": "4", "transport": "websocket"}
    if token and profile.token_in == "query":
        query["token"] = token
    return f"{scheme}://{parts.netloc}{profile.path}?{urlencode(query)}"


def preflight(base: str, token: str | None, profile: Profile = DEFAULT_PROFILE, timeout: float = 5.0) -> None:
    """Open one Socket.IO connection and close it; ConnectFailed says what went wrong."""
    url = ws_url(base, profile, token)
    parts = urlsplit(base)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectFailed(f"cannot reach {base}: {exc.strerror or exc}") from None
    header = [f"Authorization: Bearer {token}"] if token and profile.token_in == "header" else []
    try:
        ws = websocket.create_connection(url, timeout=timeout, header=header)
    except (OSError, websocket.WebSocketException) as exc:
        raise ConnectFailed(f"websocket handshake with {url} failed: {exc}") from None
    try:
        _socketio_connect(ws, profile, token)
    finally:
        ws.close()


def _socketio_connect(ws: websocket.WebSocket, profile: Profile, token: str | None) -> None:
    opened = ws.recv()
    if not isinstance(opened, str) or not opened.startswith("0"):
        raise ConnectFailed(f"not an Engine.IO v4 server: first packet {opened!r:.60}")
    ns = "" if profile.namespace == "/" else profile.namespace + ","
    auth = {profile.field("token"): token} if token and profile.token_in == "auth" else {}
    ws.send("40" + ns + orjson.dumps(auth).decode())
    while True:
        answer = ws.recv()
        if isinstance(answer, str) and answer.startswith("2"):  # ping before the connect answer
            ws.send("3")
            continue
        break
    if isinstance(answer, str) and answer.startswith("44"):
        raise ConnectFailed(f"server refused the Socket.IO connection: {answer[2 + len(ns):]:.120}")
    if not (isinstance(answer, str) and answer.startswith("40")):
        raise ConnectFailed(f"unexpected answer to the Socket.IO connect: {answer!r:.60}")
