"""Reconnect storms: many users dropped at once, and how long until all of them were whole.

A *storm* is at least :data:`MIN_FRACTION` of the run's users and at least :data:`MIN_USERS`
dropped by the server or the network (not our own ``--drop-every``) within
:data:`WINDOW_S` of each other; drops that follow within the window of the storm's last
one join it. A user is *whole* again once it has reconnected, rejoined every room and
merged its backfill (``ChatSession.whole``).

Each process keeps :class:`StormTracker` clusters (the fraction judged against its own
users, no minimum count) and ships them in ``ProcessReport.storms`` as plain dicts with
wall-clock times; :func:`summarize` merges the clusters of every process that lie within
the window of one another and keeps those that pass both thresholds over all users. Per
storm: start (s since the run started), users dropped, time until all had rejoined and
until all were whole (None while any is not), each user's time from its drop to whole (p50, max), the backfill
requests and items fetched while the storm was open, users still not whole at the end.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["MIN_FRACTION", "MIN_USERS", "WINDOW_S", "StormTracker", "format_storms", "summarize"]

WINDOW_S = 1.0
MIN_FRACTION = 0.5
MIN_USERS = 5
#: clusters one process keeps: a 1-user process would otherwise add one per drop forever
MAX_CLUSTERS = 1000


class _Cluster:
    __slots__ = ("start", "last", "users", "drops", "rejoined", "whole", "requests", "items")

    def __init__(self, users: int, drops: dict[int, float], last: float) -> None:
        self.users = users  # the process's users when it began
        self.drops = drops  # user -> drop time
        self.rejoined: dict[int, float] = {}  # user -> every room joined again
        self.whole: dict[int, float] = {}  # user -> whole-again time
        self.start = min(drops.values())
        self.last = last
        self.requests = self.items = 0

    @property
    def open(self) -> bool:
        return len(self.whole) < len(self.drops)


class StormTracker:
    """Per-process storm detection; the session calls :meth:`note_drop` / :meth:`note_whole`
    (perf_counter times), the backfill :meth:`note_backfill`. O(window) per drop."""

    def __init__(self, users: Callable[[], int], window: float = WINDOW_S, fraction: float = MIN_FRACTION) -> None:
        self._users, self.window, self.fraction = users, window, fraction
        self._recent: deque[tuple[float, int]] = deque()  # drops within the window
        self._dropped_at: dict[int, float] = {}  # user -> its latest drop, while not whole
        self._whole_at: dict[int, float] = {}  # user -> whole-again time after that drop
        self._rejoined_at: dict[int, float] = {}  # user -> rejoin time after that drop
        self._member: dict[int, _Cluster] = {}  # user -> the open cluster it waits in
        self.clusters: list[_Cluster] = []
        self.truncated = 0
        # wall-clock anchor: clusters are shipped in wall time, merged across processes
        self._wall0, self._perf0 = time.time(), time.perf_counter()

    def note_drop(self, user: int, t: float) -> None:
        """``user`` lost its connection (not by our own forced drop) at ``t``."""
        self._dropped_at[user] = t
        self._whole_at.pop(user, None)
        self._rejoined_at.pop(user, None)
        recent = self._recent
        recent.append((t, user))
        while recent and recent[0][0] < t - self.window:
            recent.popleft()
        current = self.clusters[-1] if self.clusters else None
        if current is not None and t - current.last <= self.window:
            current.last = t
            current.drops.setdefault(user, t)
            current.whole.pop(user, None)  # dropped again: whole only once it is whole again
            current.rejoined.pop(user, None)
            self._member[user] = current
            return
        dropped: dict[int, float] = {}
        for t_u, u in recent:
            dropped.setdefault(u, t_u)  # its first drop in the window
        if len(dropped) < max(1, math.ceil(self.fraction * self._users())):
            return
        if len(self.clusters) >= MAX_CLUSTERS:
            self.truncated += 1
            return
        cluster = _Cluster(self._users(), dropped, t)
        for u in dropped:
            if u in self._rejoined_at:  # already back within the window
                cluster.rejoined[u] = self._rejoined_at[u]
            if u in self._whole_at:
                cluster.whole[u] = self._whole_at[u]
            else:
                self._member[u] = cluster
        self.clusters.append(cluster)

    def note_rejoined(self, user: int, t: float) -> None:
        """``user`` has rejoined every room after its drop (its backfill still to come)."""
        if user in self._dropped_at:
            self._rejoined_at[user] = t
        cluster = self._member.get(user)
        if cluster is not None and user in cluster.drops:
            cluster.rejoined.setdefault(user, t)

    def note_whole(self, user: int, t: float) -> None:
        """``user`` is whole again (rejoined, backfill merged) at ``t``."""
        if self._dropped_at.pop(user, None) is not None:
            self._whole_at[user] = t
        cluster = self._member.pop(user, None)
        if cluster is not None and user in cluster.drops:
            cluster.whole[user] = t

    def note_backfill(self, requests: int, items: int) -> None:
        """A backfill of ``requests`` REST fetches returning ``items`` messages: counted in
        every storm still open (some of its users not whole yet)."""
        for cluster in self.clusters[-3:]:  # only the newest can still be open in practice
            if cluster.open:
                cluster.requests += requests
                cluster.items += items

    def to_json(self) -> list[dict[str, Any]]:
        """This process's clusters, plain and wall-clock: ``ProcessReport.storms``."""
        wall = self._wall0 - self._perf0
        return [{"start": wall + c.start, "last": wall + c.last, "users": c.users, "dropped": len(c.drops),
                 "whole_s": sorted(round(c.whole[u] - c.drops[u], 6) for u in c.whole),
                 "all_whole_at": None if c.open else wall + max(c.whole.values()),
                 "all_rejoined_at": (wall + max(c.rejoined.values()) if len(c.rejoined) == len(c.drops) else None),
                 "backfill_requests": c.requests, "backfill_items": c.items} for c in self.clusters]


def _p50(values: list[float]) -> float | None:
    return sorted(values)[(len(values) - 1) // 2] if values else None


def summarize(clusters: list[dict[str, Any]], users: int, started: float, window: float = WINDOW_S) -> list[dict[str, Any]]:
    """summary.json's ``storms``: the processes' clusters merged by time, those that pass
    :data:`MIN_USERS` and :data:`MIN_FRACTION` of ``users``; times since ``started``."""
    groups: list[list[dict[str, Any]]] = []
    for c in sorted(clusters, key=lambda c: c["start"]):
        if groups and c["start"] <= max(g["last"] for g in groups[-1]) + window:
            groups[-1].append(c)
        else:
            groups.append([c])
    need = max(MIN_USERS, math.ceil(MIN_FRACTION * users))
    out = []
    for g in groups:
        dropped = sum(c["dropped"] for c in g)
        if dropped < need:
            continue
        start = min(c["start"] for c in g)
        whole = sorted(v for c in g for v in c["whole_s"])
        ends = [c["all_whole_at"] for c in g]
        rejoins = [c.get("all_rejoined_at") for c in g]
        out.append({
            "start_s": round(start - started, 3),
            "users_dropped": dropped,
            "all_rejoined_s": None if None in rejoins else round(max(rejoins) - start, 3),
            "all_whole_s": None if None in ends else round(max(ends) - start, 3),
            "whole_p50_s": None if not whole else round(_p50(whole) or 0.0, 3),
            "whole_max_s": round(whole[-1], 3) if whole else None,
            "backfill_requests": sum(c["backfill_requests"] for c in g),
            "backfill_items": sum(c["backfill_items"] for c in g),
            "not_whole_at_end": dropped - len(whole),
        })
    return out


def format_storms(storms: list[dict[str, Any]], shown: int = 3) -> str | None:
    """The table's ``storms:`` line (None: no storm)."""
    if not storms:
        return None

    def one(s: dict[str, Any]) -> str:
        whole = (f"all rejoined in {s['all_rejoined_s']:.2f} s, whole in {s['all_whole_s']:.2f} s"
                 if s["all_whole_s"] is not None and s.get("all_rejoined_s") is not None
                 else f"{s['not_whole_at_end']} never whole")
        spread = f" (p50 {s['whole_p50_s']:.2f}, max {s['whole_max_s']:.2f})" if s["whole_p50_s"] is not None else ""
        return (f"@{s['start_s']:.1f}s {s['users_dropped']} dropped, {whole}{spread}, "
                f"backfill {s['backfill_requests']} req / {s['backfill_items']} items")

    more = f"; +{len(storms) - shown} more" if len(storms) > shown else ""
    return f"storms: {len(storms)}  " + "; ".join(one(s) for s in storms[:shown]) + more
