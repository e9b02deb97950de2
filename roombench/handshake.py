"""Opening a WebSocket: where (:class:`Endpoint`) and how (:func:`open_websocket`).

websocket-client does the opening handshake over a gevent socket; after it the caller
owns the raw socket and frames the connection itself (see :mod:`roombench.wsconn`).
Failures are one-line :class:`~roombench.exceptions.ConnectFailed` messages that name
what went wrong: the URL, DNS, a refused port, the HTTP status of the handshake.
"""

from __future__ import annotations

import socket as _socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import websocket
from gevent import socket as gsocket

from .exceptions import ConnectFailed

__all__ = ["Endpoint", "split_url", "open_websocket"]


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open the WebSocket for a base URL, profile and token."""

    #: the full ws:// or wss:// URL of the WebSocket handshake
    ws_url: str
    host: str
    port: int
    secure: bool
    #: the base URL's own query plus the token when it goes in the query ("" for none)
    query: str
    headers: dict[str, str]
    #: the Socket.IO CONNECT payload, None for none (and for the plain transport)
    auth: dict[str, Any] | None

    @property
    def base_url(self) -> str:
        """http(s)://host:port/ with the query: what python-socketio's connect() takes."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{netloc}:{self.port}/" + (
            f"?{self.query}" if self.query else ""
        )


def split_url(url: str) -> tuple[bool, str, int, str]:
    """(secure, host, port, query) of a base URL (http/https/ws/wss; its path is ignored).

    Raises ConnectFailed with one line when the URL cannot name a server.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectFailed(f"bad server URL {url!r}: {exc}; expected http://host:port") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ConnectFailed(f"bad server URL {url!r}: expected http://host:port or https://host:port")
    secure = parts.scheme in ("https", "wss")
    return secure, parts.hostname, port or (443 if secure else 80), parts.query


def open_websocket(ep: Endpoint, timeout: float, hint: str = "") -> Any:
    """TCP connect (a gevent socket, patched or not) and WebSocket upgrade; the raw socket.

    Raises ConnectFailed naming what failed: DNS, refused, HTTP status of the handshake.
    ``hint`` ends the message when the handshake itself fails (wrong kind of server?).
    """
    where = f"{ep.host}:{ep.port}"
    try:
        sock = gsocket.create_connection((ep.host, ep.port), timeout=timeout)
    except _socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve host {ep.host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise ConnectFailed(f"connection refused by {where}: is the server running?") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
    hint = f"; {hint}" if hint else ""
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if ep.secure:
            from gevent import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=ep.host)
        ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
        ws.connect(ep.ws_url, socket=sock, header=ep.headers, timeout=timeout,
                   redirect_limit=0, suppress_origin=True)
    except websocket.WebSocketBadStatusException as exc:
        sock.close()
        status = f"HTTP {exc.status_code} {exc.status_message or ''}".rstrip()
        raise ConnectFailed(f"WebSocket handshake with {ep.ws_url} refused: {status}{hint}") from None
    except (websocket.WebSocketException, OSError) as exc:
        sock.close()
        raise ConnectFailed(f"WebSocket handshake with {ep.ws_url} failed: {exc}{hint}") from None
    except BaseException:  # a gevent.Timeout of the caller
        sock.close()
        raise
    sock.settimeout(None)
    return sock
