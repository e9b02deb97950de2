"""Transports by name: the one place that knows every implementation.

Add a transport: a module beside this one implementing :class:`~roombench.transport.base.Transport`,
and one entry in :data:`TRANSPORTS`.
"""

from __future__ import annotations

from typing import Any

from roombench.exceptions import UsageError
from roombench.transport.base import Transport
from roombench.transport.compat import CompatTransport
from roombench.transport.plainws import PlainWsTransport
from roombench.transport.socketio import LeanTransport

#: name -> class; "lean" and "compat" speak Socket.IO, "ws" a plain WebSocket JSON envelope
TRANSPORTS: dict[str, type[Transport]] = {
    "lean": LeanTransport,
    "compat": CompatTransport,
    "ws": PlainWsTransport,
}


def make_transport(kind: str, *args: Any, **kwargs: Any) -> Transport:
    """A transport by name (a key of :data:`TRANSPORTS`); the rest goes to its constructor."""
    cls = TRANSPORTS.get(kind)
    if cls is None:
        raise UsageError(f"unknown transport {kind!r}: use lean or compat (Socket.IO) or ws (plain WebSocket)")
    return cls(*args, **kwargs)
