"""The transport interface: one persistent Socket.IO-like connection with auto-reconnect.

A transport knows frames, handshakes, ping/pong, ack ids and reconnect backoff. It knows
nothing about rooms or ledgers: the session gives it :class:`Handlers` and receives
events inline on the receive path (no greenlet or queue per message).

Implementations: ``lean`` (:mod:`roombench.transport.socketio`, own framing after websocket-client's
handshake) and ``compat`` (:mod:`roombench.transport.compat`, python-socketio's ``Client``) speak
Socket.IO; ``ws`` (:mod:`roombench.transport.plainws`, the lean framing with a JSON envelope)
speaks the contract over a plain WebSocket.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from roombench.wire.profile import Profile

#: called as ``ack(arg, payload, error)``: ``arg`` is what :meth:`Transport.emit` was given
#: with it, so one bound method serves every message (a ``functools.partial`` per send is
#: an object made and a call through C: ~1,000 instructions per ack, callgrind); payload is
#: the ack's first argument (None if it had none); error is None on success, else
#: "timeout" or "disconnected".
AckCallback = Callable[[Any, Any, str | None], None]


class Handlers(Protocol):
    """What a transport calls inline. All must be cheap and must not block.

    A Protocol, so a session can be its own handlers (four bound methods and a holder
    object per connection would cost every idle user ~0.4 KB); :class:`Callbacks` makes
    one out of four functions.
    """

    def on_connect(self, is_reconnect: bool) -> None:
        """After every successful connect; True when it is a reconnect."""

    def on_disconnect(self, reason: str) -> None:
        """Once per lost connection (not after close()), with a short reason."""

    def on_event(self, event: str, data: Any) -> None:
        """Every server event: (wire event name, first argument). ``data`` may be shared
        with other connections' handlers (lean parses a fan-out's bytes once): read it, never modify it."""

    def on_error(self, kind: str, detail: str) -> None:
        """A counted error; kinds: connect_error, protocol_error, ..."""


@dataclass(slots=True)
class Callbacks:
    """:class:`Handlers` made of four functions."""

    on_connect: Callable[[bool], None]
    on_disconnect: Callable[[str], None]
    on_event: Callable[[str, Any], None]
    on_error: Callable[[str, str], None]


@dataclass(frozen=True)
class ReconnectPolicy:
    """socket.io-client's backoff: delay * factor**attempt, capped, with +-jitter."""

    delay: float = 1.0
    delay_max: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    enabled: bool = True

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt number ``attempt`` (0-based)."""
        base = min(self.delay * self.factor**attempt, self.delay_max)
        spread = base * self.jitter
        return max(0.0, min(self.delay_max, base + random.uniform(-spread, spread)))


@dataclass(frozen=True, slots=True)
class Recovery:
    """How the last reconnect went with Socket.IO connection state recovery (a transport's
    ``recovery``, set before ``on_connect(True)`` runs; None on a first connect and on a
    transport that does not implement recovery).

    ``reason`` when not recovered: ``unsupported`` (the CONNECT reply had no pid: recovery
    is off on the server), ``no_offset`` (no event had reached us yet, so there was no
    offset to send), ``expired`` (the server answered with a new pid: the session expired,
    its pid was unknown or its offset too old; the server does not say which), ``not_tried``
    (``recover`` is off: no pid was sent).
    ``replayed``: events the server replayed before its CONNECT reply.
    """

    recovered: bool
    reason: str | None = None
    replayed: int = 0


class Transport(ABC):
    """One connection to ``url`` speaking the contract as ``profile`` spells it."""

    # slots down the hierarchy: an instance dict costs every idle user ~0.2 KB
    __slots__ = ("url", "profile", "handlers", "token", "auth_extra", "reconnect", "ack_timeout",
                 "connect_timeout", "recover", "recovery", "replaying", "connected")

    def __init__(
        self,
        url: str,
        profile: Profile,
        handlers: Handlers,
        *,
        token: str | None = None,
        auth_extra: dict[str, Any] | None = None,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        ack_timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.profile = profile
        self.handlers = handlers
        self.token = token
        self.auth_extra = auth_extra or {}
        self.reconnect = reconnect
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        #: attempt connection state recovery on reconnects (send {pid, offset}); lean only
        self.recover = False
        #: the last reconnect's recovery outcome (see :class:`Recovery`)
        self.recovery: Recovery | None = None
        #: True while the events reaching on_event are the server's replay of missed packets
        #: (between our recovery CONNECT and the server's reply)
        self.replaying = False
        #: True while the session is established (emit() works). Kept by the transport, read
        #: by everyone else: a plain attribute, because the session reads it on every send and
        #: a property costs a call through C (~800 instructions per read, callgrind)
        self.connected = False

    @abstractmethod
    def connect(self) -> None:
        """First connect; blocks (cooperatively) until connected.

        Raises ConnectFailed. After success, lost connections are re-established in
        the background with ``reconnect`` backoff until close().
        """

    @abstractmethod
    def emit(self, event: str, data: Any, ack: AckCallback | None = None, arg: Any = None) -> bool:
        """Send an event; False (and nothing sent) when not connected.

        With ``ack`` the packet carries an ack id; ``ack(arg, payload, error)`` is called
        exactly once: with the server's answer, or with error "timeout" after
        ``ack_timeout`` or "disconnected" when the connection is lost first. False means
        it is never called; True, that it is (or already was, when the ack failed while
        the send waited for buffer space and then the send failed too).
        """

    @abstractmethod
    def drop(self) -> None:
        """Abort the TCP connection now, as a network failure would (no close frame).

        The reconnect loop then takes over, as for any lost connection.
        """

    def drop_for(self, seconds: float) -> None:
        """:meth:`drop`, then stay down at least ``seconds`` before reconnecting (a longer
        outage than the backoff alone makes). Only the lean transport implements the wait."""
        self.drop()

    @abstractmethod
    def close(self) -> None:
        """Graceful close; no more reconnects; pending acks fail with "disconnected"."""
