"""Send times of broadcast signals (typing, read receipts) awaiting the members' copies."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

#: hard cap on entries, whatever the horizon: past it the oldest go first
MAX_ENTRIES = 200_000


class SentSignals:
    """``key -> send time`` of signals still awaited, bounded.

    An entry expects one copy per other member of the room; it goes once they all came
    (the actor's own copy does not count), or once it is older than ``horizon`` seconds
    (a member that was away never answers), or when more than ``cap`` are held. Eviction
    runs on every :meth:`sent`, oldest first, so the cost is O(1) amortized; every entry
    evicted with copies still missing adds one to ``counters[expired_key]``.
    """

    __slots__ = ("horizon", "cap", "_counters", "_expired_key", "_entries")

    def __init__(self, horizon: float, counters: Counter[str], expired_key: str, cap: int = MAX_ENTRIES) -> None:
        self.horizon = horizon
        self.cap = cap
        self._counters = counters
        self._expired_key = expired_key
        self._entries: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [t0, copies awaited]

    def __len__(self) -> int:
        return len(self._entries)

    def sent(self, key: Hashable, t0: float, copies: int) -> None:
        """A signal went out at ``t0``; ``copies`` other members should tell us."""
        entries = self._entries
        entries.pop(key, None)  # re-sent (same room, user, id): the newest send counts
        if copies > 0:
            entries[key] = [t0, copies]
        cutoff = t0 - self.horizon
        while entries:
            first = next(iter(entries.values()))
            if first[0] >= cutoff and len(entries) <= self.cap:
                break
            entries.popitem(last=False)
            self._counters[self._expired_key] += 1

    def received(self, key: Hashable) -> float | None:
        """One member's copy arrived: its send time (None if unknown or evicted)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry[1] -= 1
        if entry[1] <= 0:
            del self._entries[key]
        return entry[0]
