"""Delivery order with opaque message ids: judged against the server's order, never by value.

For one sender's messages in a room, the server's order is the order the sender's
connection first heard of each one: its ack or its own copy, whichever came first. Both
leave the server in the order it processed them and TCP keeps it; taking the first keeps a
server that fans out, then acks after awaits of varying length, in order. Messages of
different senders have no order between them that opaque ids could show, so they are
never compared.

Each first live delivery is checked against the same receiver's previous delivery from the
same sender in that room. A receiver often gets a copy before its sender hears of it, so a
pair whose ranks are not both known waits on a mark that lacks one and is judged when that
rank comes: each pair judged once, never guessed. Pure bookkeeping, O(1) per call.
"""

from __future__ import annotations

from typing import Any

#: one message's mark: [rank or None, waiting checks or None]; a check is (other mark, self first?)
Mark = list[Any]


def new_mark() -> Mark:
    """The mark of a message nobody has heard of yet."""
    return [None, None]


class SenderOrder:
    """The out-of-order count of one ledger's opaque-id messages (see module docstring)."""

    __slots__ = ("out_of_order", "_rank", "_last")

    def __init__(self) -> None:
        self.out_of_order = 0
        self._rank = 0
        # (receiver, room, sender) -> mark of the last message delivered live
        self._last: dict[tuple[int, str, int], Mark] = {}

    def heard(self, mark: Mark) -> None:
        """The sender's connection heard of this message now (ack or own copy); the first
        call ranks it and judges the checks that waited on it, later ones do nothing."""
        if mark[0] is not None:
            return
        self._rank += 1
        mark[0] = self._rank
        checks, mark[1] = mark[1], None
        for other, first in checks or ():
            self._check(mark, other, first)

    def delivered(self, receiver: int, room: str, sender: int, mark: Mark) -> None:
        """A first live copy reached ``receiver``: the previous one from ``sender`` in
        ``room`` must rank before it."""
        key = (receiver, room, sender)
        prev = self._last.get(key)
        self._last[key] = mark
        if prev is not None:
            self._check(prev, mark, True)

    def _check(self, a: Mark, b: Mark, a_first: bool) -> None:
        """Judge "``a`` ranks before ``b``" (after it, if not ``a_first``) once both ranks
        are known; until then the check waits on a mark without one."""
        ra, rb = a[0], b[0]
        if ra is None or rb is None:
            waiter, other, first = (a, b, a_first) if ra is None else (b, a, not a_first)
            if waiter[1] is None:
                waiter[1] = []
            waiter[1].append((other, first))
            return
        if (ra < rb) != a_first:
            self.out_of_order += 1
