"""Every error roombench raises on purpose.

    RoombenchError
    ├── UsageError          bad option, SLO expression, profile or sweep file (exit 2)
    ├── TransportError      the connection could not be made or broke
    │   ├── ConnectFailed   refused / wrong URL / handshake or Socket.IO connect error
    │   │   ├── Refused         the server answered connect with a refusal (``message``)
    │   │   ├── ConnectTimeout      no answer in time (``stage``: "handshake" or "session")
    │   │   └── HandshakeFailed     the WebSocket upgrade failed (``status``: HTTP status or None)
    │   └── ProtocolError   a frame or packet we cannot parse
    ├── BackfillError       the REST backfill answered 4xx/5xx or malformed JSON (``status``,
    │   │                   ``transient``: unreachable, 429 or 502-504, worth asking again)
    │   ├── BackfillShapeError  JSON, but not a list of messages where the profile says
    │   └── BackfillOversize    a page larger than ``[backfill] max_bytes`` (read no further)
    ├── ReportError         a process report of an unknown schema, or none to merge
    │   └── ReportMismatch  reports of different runs (scenario, profile, target) merged
    └── ServerError         a server variant would not start or never became ready (``port_taken``)

Messages name the culprit and what to do, so the CLI can print one line and exit.
Callers decide on types and fields, never on message text.
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


class Refused(ConnectFailed):
    """The server answered our connect with a refusal (Socket.IO 44, plain connect_error)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"server refused the connection: {message}")
        self.message = message


class ConnectTimeout(ConnectFailed):
    """No answer in time: ``stage`` "handshake" (TCP connect / WebSocket upgrade) or
    "session" (the Socket.IO or plain session connect after the upgrade)."""

    def __init__(self, message: str, stage: str = "handshake") -> None:
        super().__init__(message)
        self.stage = stage


class HandshakeFailed(ConnectFailed):
    """The WebSocket upgrade failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(TransportError):
    """A frame or packet from the server could not be parsed."""


class BackfillError(RoombenchError):
    """The REST backfill endpoint answered with an error status or malformed data;
    ``status`` is the HTTP status of an error answer (None: no answer, or bad data);
    ``transient``: the request could not be made or the server said "not now" (a server
    restarting or shedding load), so the same request may succeed a moment later."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class BackfillShapeError(BackfillError):
    """The backfill answered JSON, but not a list of messages under the profile's key."""


class BackfillOversize(BackfillError):
    """A backfill page was larger than the profile's ``[backfill] max_bytes``."""


class ReportError(RoombenchError):
    """A process report that cannot be read (unknown schema) or merged (none given)."""


class ReportMismatch(ReportError):
    """Process reports of different runs: their scenario, profile or target differ."""


class ServerError(RoombenchError):
    """A server under test failed to start or to become ready.

    ``port_taken``: it exited because its port was taken (a free-port race; worth a retry).
    """

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken
