"""What a :class:`~roombench.chat.session.ChatSession` needs from its process: the protocols.

The generator (one layer up) satisfies :class:`SessionContext`; the session depends on
these protocols only, so chat never imports the generator, nor measure (``Recorder`` is
the one method of its metrics the session calls).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from roombench.chat.clock import SendClock
from roombench.chat.ledger import Ledger
from roombench.chat.rooms import RoomRegistry
from roombench.chat.scenario import Scenario
from roombench.chat.signals import SentSignals
from roombench.wire.profile import Profile

__all__ = ["Backfill", "Recorder", "SessionContext"]


class Recorder(Protocol):
    """Latency histograms: ``record("ack", seconds)``."""

    def record(self, name: str, seconds: float) -> None: ...


class Backfill(Protocol):
    """The REST backfill: every message of ``channel`` with id > ``after`` (BackfillError)."""

    def after(self, channel: str, after: int, deadline: float) -> list[dict[str, Any]]: ...


class SessionContext(Protocol):
    """Per-process state the sessions of one run share (read-only attributes)."""

    @property
    def scenario(self) -> Scenario: ...

    @property
    def profile(self) -> Profile: ...

    @property
    def hosts(self) -> list[str]:
        """Base URLs; user ``n`` connects to ``hosts[n % len(hosts)]``."""
        ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def registry(self) -> RoomRegistry: ...

    @property
    def metrics(self) -> Recorder: ...

    @property
    def rest(self) -> Backfill: ...

    @property
    def counters(self) -> Counter[str]:
        """Plain event counts (sends_skipped_offline, forced_drops, ...)."""
        ...

    @property
    def typing_sent(self) -> SentSignals:
        """(room, user) -> typing send time."""
        ...

    @property
    def read_sent(self) -> SentSignals:
        """(room, user, message id) -> read receipt send time."""
        ...

    @property
    def clock(self) -> SendClock | None:
        """The process's send loop; None: every session runs its own (ROOMBENCH_SENDER=greenlet)."""
        ...

    @property
    def stopping(self) -> bool:
        """True once the run stops: the send loops end."""
        ...

    def rooms_for(self, user_no: int) -> list[str]: ...

    def error(self, kind: str, detail: str) -> None:
        """Count an error of ``kind`` (``detail``: a sample for the log)."""
        ...

    # reconnect storms (measure/storms.py): a drop not forced by us, whole again, a backfill's load
    def note_drop(self, user_no: int, t: float) -> None: ...

    def note_rejoined(self, user_no: int, t: float) -> None: ...

    def note_whole(self, user_no: int, t: float) -> None: ...

    def note_backfill(self, requests: int, items: int) -> None: ...
