"""Opening a WebSocket: where (:class:`Endpoint`) and how (:func:`connect_websocket`).

The HTTP upgrade runs over a gevent socket; after it the caller owns the raw socket and
frames the connection itself (see :mod:`roombench.transport.framed`). :func:`connect_websocket`
does the upgrade itself (a few recv calls, the bytes read past the answer handed back).
Failures are one-line :class:`~roombench.exceptions.ConnectFailed` messages that name
what went wrong: the URL, DNS, a refused port, the HTTP status of the handshake.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import ipaddress
import os
import socket as _socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from gevent import socket as gsocket
from gevent.monkey import get_original

from roombench.exceptions import ConnectFailed, ConnectTimeout, HandshakeFailed
from roombench.wire.profile import Profile

__all__ = ["Endpoint", "split_url", "connect_websocket"]


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
    def safe_url(self) -> str:
        """``ws_url`` fit to print: every query value redacted (a token may ride in the query)."""
        base, sep, query = self.ws_url.partition("?")
        if not sep:
            return base
        keep = ("EIO", "transport")  # the protocol's own, never secret
        parts = [kv if kv.partition("=")[0] in keep else kv.partition("=")[0] + "=***"
                 for kv in query.split("&") if kv]
        return base + "?" + "&".join(parts)

    @property
    def base_url(self) -> str:
        """http(s)://host:port/ with the query: what python-socketio's connect() takes."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{netloc}:{self.port}/" + (
            f"?{self.query}" if self.query else ""
        )


@functools.lru_cache(maxsize=64)  # every session of a run parses the same few URLs
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


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: the most a server's handshake answer may take before its blank line
_MAX_HEAD = 64 * 1024


#: IP_BIND_ADDRESS_NO_PORT (Linux 4.2): bind() picks the source address only; connect() the port
_BIND_NO_PORT = getattr(_socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_SOURCES_ENV = "ROOMBENCH_LOOPBACK_SOURCES"
#: loopback source addresses a connect to a 127/8 server rotates over, unless the env says otherwise
LOOPBACK_SOURCES = 8


@functools.lru_cache(maxsize=64)  # every session of a run connects to the same few hosts
def _literal(host: str) -> tuple[int, bool] | None:
    """(family, on IPv4 loopback) of an IP literal; None for a host name (parsing an
    address costs ~5 % of a connect's CPU: once per host is enough)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (_socket.AF_INET6, False) if ip.version == 6 else (_socket.AF_INET, ip.is_loopback)


@functools.lru_cache(maxsize=8)
def _loopback_sources(setting: str | None) -> int:
    if setting is None:
        return LOOPBACK_SOURCES
    try:
        n = int(setting)
    except ValueError:
        n = 0
    if not 1 <= n <= 254:
        raise ConnectFailed(f"{_SOURCES_ENV} must be a whole number from 1 to 254 (1: connect from "
                            f"127.0.0.1 only), not {setting!r}")
    return n


class _Sources:
    """Which loopback source address the next connect binds to (see :func:`_spread`)."""

    turn = 0
    #: False once a bind to 127.0.0.2+ failed: this host's loopback has only 127.0.0.1
    usable = True


def _spread(sock: Any, n: int) -> None:
    """Bind ``sock`` to the next of 127.0.0.1..``n``, for a connect to a loopback server.

    Linux gives connect() the even half of its ephemeral ports first and then searches
    the whole range on every call: past ~14,000 connections to one address and port a
    connect costs 1.1-1.9 ms of CPU instead of ~30 us (measured here, and it doubled the
    generator's connect cost at 19,800 idle connections), and past ~28,000 there is no
    port left. Every 127/8 address is local, so N source addresses give N times the ports
    at the cheap price. IP_BIND_ADDRESS_NO_PORT leaves the port to connect(), which then
    shares ports across addresses as it does for one. 127.0.0.1 itself needs no bind.
    """
    i = _Sources.turn % n
    _Sources.turn = i + 1
    if i == 0 or not _Sources.usable:
        return
    try:
        sock.setsockopt(_socket.IPPROTO_IP, _BIND_NO_PORT, 1)
        sock.bind((f"127.0.0.{1 + i}", 0))
    except OSError:  # a loopback with 127.0.0.1 only (some containers): unbound, connect as usual
        _Sources.usable = False


def _tcp(ep: Endpoint, timeout: float) -> Any:
    """A connected gevent TCP socket; ConnectFailed naming what failed.

    An IP literal connects directly: gevent's create_connection would resolve it in its
    thread pool, which costs more CPU than the rest of the connect (measured). A loopback
    one connects from one of several loopback addresses in turn (:func:`_spread`).
    """
    where = f"{ep.host}:{ep.port}"
    sock = None
    try:
        literal = _literal(ep.host)
        if literal is None:
            return gsocket.create_connection((ep.host, ep.port), timeout=timeout)
        family, loopback = literal
        sources = _loopback_sources(os.environ.get(_SOURCES_ENV)) if loopback else 1  # checked before a socket exists
        sock = gsocket.socket(family, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if sources > 1:
            _spread(sock, sources)
        _connect(sock, (ep.host, ep.port))
        return sock
    except _socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve host {ep.host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        if sock is not None:
            sock.close()
        raise ConnectFailed(f"connection refused by {where}: is the server running?") from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        kind = ConnectTimeout if isinstance(exc, TimeoutError) else ConnectFailed
        raise kind(f"cannot connect to {where}: {exc.strerror or exc}") from None


def _secure(sock: Any, ep: Endpoint) -> Any:
    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    if not ep.secure:
        return sock
    from gevent import ssl

    return ssl.create_default_context().wrap_socket(sock, server_hostname=ep.host)


try:
    _poll: Any = get_original("select", "poll")  # the standard library's, not gevent's patched module
except AttributeError:  # a platform without poll(): always gevent's wait
    _poll = None
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY)


def _connect(sock: Any, address: tuple[str, int]) -> None:
    """gevent's connect, minus its hub round trip when the kernel already finished.

    On loopback the handshake completes inside connect() itself, which still says
    EINPROGRESS; gevent then waits for writability through the hub and connects a second
    time (two extra syscalls, a timer and a switch: ~15 % of a session's connect CPU,
    measured). A zero-timeout poll sees it is already writable. Elsewhere it waits as
    gevent does; the caller's timeout bounds the wait.
    """
    raw = getattr(sock, "_sock", None)
    if raw is None or _poll is None or type(sock) is not gsocket.socket:
        sock.connect(address)
        return
    err = raw.connect_ex(address)
    if err in _IN_PROGRESS:
        poll = _poll()
        poll.register(raw.fileno(), 4)  # POLLOUT
        if not poll.poll(0):
            sock._wait(sock._write_event)
        err = raw.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
    if err and err != errno.EISCONN:
        raise OSError(err, os.strerror(err))


def connect_websocket(ep: Endpoint, timeout: float, hint: str = "") -> tuple[Any, bytes]:
    """TCP connect (a gevent socket, patched or not) and our own WebSocket upgrade:
    (socket, bytes already read past the server's answer, i.e. the start of its first
    frames). Raises ConnectFailed naming what failed: DNS, refused, the handshake's HTTP
    status; ``hint`` ends the message when the handshake itself fails (wrong server?).

    websocket-client reads the answer's headers one byte per recv() call (it must not
    read past them); reading them in a few calls and handing the rest to the framing
    layer costs a fraction of that per connect (measured: ~25 % of a connect's CPU).
    """
    sock = _tcp(ep, timeout)
    hint = f"; {hint}" if hint else ""
    try:
        sock = _secure(sock, ep)
        key = base64.b64encode(os.urandom(16))
        sock.sendall(_upgrade_request(ep, key))
        status, reason, headers, rest = _read_answer(sock)
        if status != 101:
            sock.close()
            raise HandshakeFailed(f"WebSocket handshake with {ep.safe_url} refused: HTTP {status} {reason}".rstrip()
                                  + body_excerpt(rest) + hint, status)
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise OSError("the server's Sec-WebSocket-Accept does not answer our key")
    except ConnectFailed:
        raise
    except OSError as exc:
        sock.close()
        kind = ConnectTimeout if isinstance(exc, TimeoutError) else HandshakeFailed
        raise kind(f"WebSocket handshake with {ep.safe_url} failed: {exc}{hint}") from None
    except BaseException:  # a gevent.Timeout of the caller
        sock.close()
        raise
    sock.settimeout(None)
    return sock, rest


def body_excerpt(body: bytes | str | None, limit: int = 100) -> str:
    """``": <first chars of body>"`` on one line (whitespace collapsed), or "" for none:
    an HTML error page must not fill the terminal, but its first words say what answered."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    text = " ".join(text.split())
    if not text:
        return ""
    return ": " + (text if len(text) <= limit else text[:limit] + "...")


def _upgrade_request(ep: Endpoint, key: bytes) -> bytes:
    parts = urlsplit(ep.ws_url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{ep.host}]" if ":" in ep.host else ep.host
    host = netloc if ep.port == (443 if ep.secure else 80) else f"{netloc}:{ep.port}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in ep.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_answer(sock: Any) -> tuple[int, str, dict[str, str], bytes]:
    """(status, reason, lower-cased headers, bytes after the blank line) of the HTTP answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("connection closed during the handshake")
        data += chunk
        if len(data) > _MAX_HEAD:
            raise OSError(f"no end of the HTTP answer's headers within {_MAX_HEAD} bytes")
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise OSError(f"not an HTTP answer: {status_line[:60]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(fields[1]), fields[2] if len(fields) > 2 else "", headers, rest


def socketio_endpoint(url: str, profile: Profile, token: str | None, auth_extra: dict[str, Any]) -> Endpoint:
    """Resolve ``url`` (http/https/ws/wss; its path is ignored) into a Socket.IO :class:`Endpoint`.

    Raises ConnectFailed with one line when the URL cannot name a server.
    """
    secure, host, port, query = split_url(url)
    headers: dict[str, str] = {}
    auth: dict[str, Any] | None = dict(auth_extra) or None
    if token is not None:
        if profile.token_in == "query":
            name, value = profile.socket_token(token)
            query += ("&" if query else "") + quote(name, safe="") + "=" + quote(value, safe="")
        elif profile.token_in == "header":
            name, value = profile.socket_token(token)
            headers[name] = value
        else:
            auth = {profile.field("token"): token, **auth_extra}
    netloc = f"[{host}]" if ":" in host else host
    path = "/" + profile.path.strip("/") + "/"
    ws_url = f"{'wss' if secure else 'ws'}://{netloc}:{port}{path}?EIO=4&transport=websocket"
    ws_url += f"&{query}" if query else ""
    return Endpoint(ws_url, host, port, secure, query, headers, auth)
