"""Every error roombench raises on purpose.

    RoombenchError
    ├── UsageError          bad option, SLO expression, profile or sweep file (exit 2)
    ├── TransportError      the connection could not be made or broke
    │   ├── ConnectFailed   refused / wrong URL / handshake or Socket.IO connect error
    │   └── ProtocolError   a frame or packet we cannot parse
    ├── BackfillError       the REST backfill answered 4xx/5xx or malformed JSON
    └── ServerError         a server variant would not start or never became ready

Messages name the culprit and what to do, so the CLI can print one line and exit.
"""

from __future__ import annotations


class RoombenchError(Exception):
    """Base class for all roombench errors."""


class UsageError(RoombenchError):
    """Bad command-line option, SLO expression, profile or sweep file."""


class TransportError(RoombenchError):
    """A connection could not be made, or broke."""


class ConnectFailed(TransportError):
    """Connecting failed: refused, bad URL, failed handshake, or a Socket.IO connect error."""


class ProtocolError(TransportError):
    """A frame or packet from the server could not be parsed."""


class BackfillError(RoombenchError):
    """The REST backfill endpoint answered with an error status or malformed data."""


class ServerError(RoombenchError):
    """A server under test failed to start or to become ready."""
