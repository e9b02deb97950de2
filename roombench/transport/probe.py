"""A quick synchronous check that a target answers before a run starts.

So that a wrong URL, a refused port or a wrong token costs one clear line and exit 2,
not a run full of counted connect errors. It opens one connection the way the chosen
transport would (same endpoint code) and closes it.
"""

from __future__ import annotations

import socket
from typing import Any

import orjson
import websocket

from roombench.exceptions import ConnectFailed, UsageError
from roombench.transport.handshake import Endpoint, body_excerpt, split_url
from roombench.wire.profile import DEFAULT_PROFILE, Profile


def check_url(base: str) -> None:
    """UsageError (one line) when ``base`` cannot name a server."""
    try:
        split_url(base)
    except ConnectFailed as exc:
        raise UsageError(str(exc)) from None


def preflight(base: str, token: str | None, profile: Profile = DEFAULT_PROFILE, transport: str = "lean",
              timeout: float = 5.0) -> None:
    """Open one connection and close it; ConnectFailed says what went wrong."""
    check_url(base)
    ep = _endpoint(base, profile, token, transport)
    try:
        socket.create_connection((ep.host, ep.port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectFailed(f"cannot reach {base}: {exc.strerror or exc}") from None
    header = [f"{k}: {v}" for k, v in ep.headers.items()]
    try:
        ws = websocket.create_connection(ep.ws_url, timeout=timeout, header=header)
    except websocket.WebSocketBadStatusException as exc:  # its str() is the whole answer, body and all
        raise ConnectFailed(f"websocket handshake with {ep.safe_url} refused: HTTP {exc.status_code}"
                            + body_excerpt(exc.resp_body)) from None
    except (OSError, websocket.WebSocketException) as exc:
        raise ConnectFailed(f"websocket handshake with {ep.safe_url} failed: {' '.join(str(exc).split()):.160}") from None
    try:
        if transport == "ws":
            _plain_connect(ws)
        else:
            _socketio_connect(ws, profile, ep.auth)
    except (OSError, websocket.WebSocketException) as exc:
        raise ConnectFailed(f"{base} closed the connection during the connect: {exc}") from None
    finally:
        ws.close()


def _endpoint(base: str, profile: Profile, token: str | None, transport: str) -> Endpoint:
    if transport == "ws":
        from roombench.transport.plainws import plain_endpoint

        return plain_endpoint(base, profile, token, {})
    from roombench.transport.handshake import socketio_endpoint

    return socketio_endpoint(base, profile, token, {})


def _socketio_connect(ws: websocket.WebSocket, profile: Profile, auth: dict[str, Any] | None) -> None:
    opened = ws.recv()
    if not isinstance(opened, str) or not opened.startswith("0"):
        raise ConnectFailed(f"not an Engine.IO v4 server: first packet {opened!r:.60}")
    ns = "" if profile.namespace == "/" else profile.namespace + ","
    ws.send("40" + ns + (orjson.dumps(auth).decode() if auth else ""))
    answer = ws.recv()
    while isinstance(answer, str) and answer.startswith("2"):  # a ping before the connect answer
        ws.send("3")
        answer = ws.recv()
    if isinstance(answer, str) and answer.startswith("44"):
        raise ConnectFailed(f"server refused the connection: {answer[2 + len(ns):]:.120}")
    if not (isinstance(answer, str) and answer.startswith("40")):
        raise ConnectFailed(f"unexpected answer to the Socket.IO connect: {answer!r:.60}")


def _plain_connect(ws: websocket.WebSocket) -> None:
    from roombench.transport.plainws import CONNECT_ERROR, CONNECTED

    try:
        first = orjson.loads(ws.recv())
    except orjson.JSONDecodeError:
        raise ConnectFailed("not a roombench plain WebSocket server: first message is not JSON") from None
    event = first.get("event") if isinstance(first, dict) else None
    if event == CONNECT_ERROR:
        raise ConnectFailed(f"server refused the connection: {first.get('data')!r:.120}")
    if event != CONNECTED:
        raise ConnectFailed(f"unexpected first message from the plain WebSocket server: {first!r:.80}")
