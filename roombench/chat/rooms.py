"""Which users are in which room, in this generator process."""

from __future__ import annotations


class RoomRegistry:
    """Room membership as the ledger sees it: a user is a member from its first join ack
    until it leaves — also while disconnected, since it must then get what it missed by
    backfill. Snapshots are cached frozensets, rebuilt only when membership changes."""

    def __init__(self) -> None:
        self._members: dict[str, set[int]] = {}
        self._frozen: dict[str, frozenset[int]] = {}

    def add(self, room: str, user: int) -> None:
        """Make ``user`` a member of ``room``."""
        self._members.setdefault(room, set()).add(user)
        self._frozen.pop(room, None)

    def remove(self, room: str, user: int) -> None:
        """``user`` left ``room``."""
        self._members.get(room, set()).discard(user)
        self._frozen.pop(room, None)

    def members(self, room: str) -> frozenset[int]:
        """The current members (cheap: cached until the next change)."""
        snap = self._frozen.get(room)
        if snap is None:
            snap = self._frozen[room] = frozenset(self._members.get(room, ()))
        return snap


def rooms_for(user: int, room_size: int, rooms_per_user: int, prefix: str) -> list[str]:
    """The rooms user number ``user`` joins.

    Layer j groups users in blocks of ``room_size`` shifted by j*room_size/rooms_per_user,
    so a user's rooms have different (overlapping) member sets, like real chat groups.
    """
    out = []
    for j in range(rooms_per_user):
        shift = j * room_size // rooms_per_user
        out.append(f"{prefix}r{j}-{(user + shift) // room_size}")
    return out
