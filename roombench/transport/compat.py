"""The compat transport: python-socketio's sync ``Client``, mapped onto :class:`Transport`.

It is the reference implementation of the client side (slow: a greenlet and a queue hop
per message) that the lean transport is checked against. python-socketio does the
framing, pings and reconnects; this module adds what the Transport contract promises
beyond it: ack timeouts and fail-on-disconnect with the callback called exactly once
(the same :class:`~roombench.transport.socketio.AckTable` and sweeper as the lean transport), a
reconnect after the server ends the session (python-socketio gives up there), and
handlers that never leak a traceback into python-socketio's logger.

One difference stays: python-socketio's reconnect jitter is +-``jitter`` *seconds*, not a
fraction of the delay as in :class:`~roombench.transport.base.ReconnectPolicy`.
"""

from __future__ import annotations

import socket as _socket
import struct
import threading
from functools import partial
from typing import Any

import socketio

from roombench.wire.packets import connect_error_message
from roombench.exceptions import ConnectFailed
from roombench.transport.handshake import connect_websocket
from roombench.transport.acks import SWEEPER, AckTable
from roombench.transport.handshake import Endpoint, socketio_endpoint
from roombench.transport.base import AckCallback, Transport

__all__ = ["CompatTransport"]

_LINGER_0 = struct.pack("ii", 1, 0)
_SERVER_DISCONNECT = socketio.Client.reason.SERVER_DISCONNECT


class CompatTransport(Transport):
    """python-socketio ``Client`` behind the Transport interface; same constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks = AckTable(self.ack_timeout, self._report)
        self._ns = self.profile.namespace
        self._known = self.profile.wire_events
        self._sio: socketio.Client | None = None
        self._connect_args: dict[str, Any] = {}
        self._ever_connected = False
        self._refused: str | None = None
        self._closing = threading.Event()  # gevent's Event when monkey-patched

    def connect(self) -> None:
        """Connect (blocking); raises ConnectFailed. See Transport.connect."""
        if self._sio is not None:
            raise ConnectFailed("connect() called on a transport that is already connected")
        ep = socketio_endpoint(self.url, self.profile, self.token, self.auth_extra)
        policy = self.reconnect
        sio = socketio.Client(
            reconnection=policy.enabled, reconnection_attempts=0,
            reconnection_delay=policy.delay, reconnection_delay_max=policy.delay_max,
            randomization_factor=policy.jitter, request_timeout=self.connect_timeout,
            logger=False, engineio_logger=False, handle_sigint=False,
        )
        self._register(sio)
        self._connect_args = dict(
            url=ep.base_url, headers=ep.headers, auth=ep.auth, transports=["websocket"],
            namespaces=[self._ns], socketio_path=self.profile.path, wait_timeout=self.connect_timeout,
        )
        self._closing.clear()
        SWEEPER.add(self, self._acks)
        self._sio = sio  # before connect(): on_connect handlers emit (e.g. their joins)
        try:
            sio.connect(**self._connect_args)
        except (socketio.exceptions.ConnectionError, ValueError) as exc:
            self._sio = None
            SWEEPER.discard(self)
            raise self._why_not(ep, exc) from None

    def emit(self, event: str, data: Any, ack: AckCallback | None = None, arg: Any = None) -> bool:
        """Send an event; see Transport.emit. False (ack never called) when not connected."""
        sio = self._sio
        if sio is None or not self.connected:
            return False
        aid = None if ack is None else self._acks.add(ack, arg)
        try:
            callback = None if aid is None else partial(self._on_ack, aid)
            sio.emit(event, data, namespace=self._ns, callback=callback)
        except socketio.exceptions.SocketIOError:  # lost between the check and the emit
            return aid is not None and self._acks.send_failed(aid)
        return True

    def drop(self) -> None:
        """Reset the socket under python-socketio; it sees a network failure and reconnects."""
        ws = getattr(self._sio.eio, "ws", None) if self._sio is not None else None
        sock = getattr(ws, "sock", None)
        if sock is None:
            return
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_0)
            sock.shutdown(_socket.SHUT_RDWR)
        except OSError:  # already gone: python-socketio is on it
            pass

    def close(self) -> None:
        """Disconnect, stop reconnecting, fail pending acks."""
        if self._closing.is_set():
            return
        self._closing.set()
        self.connected = False
        sio, self._sio = self._sio, None
        if sio is not None:
            sio.shutdown()  # joins a running reconnect task, which may have just succeeded
            if sio.connected:
                sio.disconnect()
        self._acks.fail_all("disconnected")
        SWEEPER.discard(self)

    # ------------------------------------------------------------------ internals

    def _register(self, sio: socketio.Client) -> None:
        ns = self._ns
        sio.on("connect", self._on_connect, namespace=ns)
        sio.on("connect_error", self._on_connect_error, namespace=ns)
        sio.on("disconnect", self._on_disconnect, namespace=ns)
        sio.on("*", self._on_any, namespace=ns)
        # python-socketio raises out of its message task on a packet it cannot decode (a
        # traceback on stderr, nothing for us); report it as the lean transport does
        handle = sio._handle_eio_message

        def guarded(data: Any) -> None:
            try:
                handle(data)
            except Exception as exc:  # noqa: BLE001 - our own handlers never raise into here
                self._report("protocol_error", f"undecodable packet {str(data)[:60]!r}: {type(exc).__name__}: {exc}")

        sio.eio.on("message", guarded)

    def _why_not(self, ep: Endpoint, exc: Exception) -> ConnectFailed:
        """A ConnectFailed as precise as the lean transport's (python-socketio says little)."""
        if self._refused is not None:
            return ConnectFailed(f"server refused the connection: {self._refused}")
        try:  # find out what went wrong with one handshake of our own
            connect_websocket(ep, min(self.connect_timeout, 3.0))[0].close()
        except ConnectFailed as precise:
            return precise
        return ConnectFailed(f"could not connect to {self.url}: {exc}")

    def _on_connect(self) -> None:
        if self._closing.is_set():  # a reconnect that raced close(); close() disconnects it
            return
        self.connected = True
        again, self._ever_connected = self._ever_connected, True
        self._call("on_connect", again)

    def _on_connect_error(self, data: Any = None) -> None:
        # a dict is the server's CONNECT_ERROR; a string is python-socketio's network error
        message = connect_error_message(data)
        if not self._ever_connected:
            if isinstance(data, dict):
                self._refused = message
        elif not self._closing.is_set():
            self._report("connect_error", message if isinstance(data, dict) else f"reconnect failed: {message}")

    def _on_disconnect(self, reason: Any = None) -> None:
        if not self.connected:
            return
        self.connected = False
        self._acks.fail_all("disconnected")
        if self._closing.is_set():
            return
        self._call("on_disconnect", str(reason or "connection lost"))
        if reason == _SERVER_DISCONNECT and self.reconnect.enabled and self._sio is not None:
            # python-socketio does not reconnect after the server ends the session; we do
            self._sio.start_background_task(self._reconnect_after_server_disconnect)

    def _reconnect_after_server_disconnect(self) -> None:
        attempt = 0
        while not self._closing.wait(self.reconnect.backoff(attempt)):
            attempt += 1
            sio = self._sio
            if sio is None:
                return
            try:
                sio.connect(**self._connect_args)
                if self._closing.is_set():
                    sio.disconnect()
                return
            except (socketio.exceptions.ConnectionError, ValueError) as exc:
                self._report("connect_error", f"reconnect failed: {exc}")

    def _on_any(self, event: str, *args: Any) -> None:
        if event in self._known:
            self._call("on_event", event, args[0] if args else None)
        else:
            self._report("protocol_error", f"unknown event {event!r}")

    def _on_ack(self, aid: int, *args: Any) -> None:
        try:
            late = not self._acks.resolve(aid, args[0] if args else None)
        except Exception as exc:  # noqa: BLE001 - keep python-socketio from logging a traceback
            self._report("handler_error", f"ack callback: {type(exc).__name__}: {exc}")
            return
        if late:
            self._report("late_ack", f"ack {aid} arrived after its timeout")

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self.handlers, name)(*args)
        except Exception as exc:  # noqa: BLE001 - keep python-socketio from logging a traceback
            self._report("handler_error", f"{name}: {type(exc).__name__}: {exc}")

    def _report(self, kind: str, detail: str) -> None:
        try:
            self.handlers.on_error(kind, detail)
        except Exception:  # noqa: BLE001, S110 - the error channel itself failed
            pass

