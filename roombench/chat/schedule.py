"""Open-loop send times: the intended send time is the latency origin.

A stalled server or a lagging generator cannot hide behind coordinated omission: when
sends fall behind, they go out back to back, each still measured from the time it was
due, so the stall shows up in every latency it caused.
"""

from __future__ import annotations

import random


class OpenLoop:
    """Fixed-rate schedule with a random start offset (so users do not send in lockstep)."""

    __slots__ = ("interval", "next")

    def __init__(self, rate: float, start: float, rng: random.Random | None = None) -> None:
        self.interval = 1.0 / rate
        self.next = start + (rng or random).uniform(0.0, self.interval)

    def advance(self) -> float:
        """Return the current intended time and move to the next one."""
        t = self.next
        self.next = t + self.interval
        return t


class RandomEvery:
    """Events spaced uniformly in [0.5, 1.5] x mean seconds (forced drops); never if mean is 0."""

    __slots__ = ("mean", "next", "rng")

    def __init__(self, mean: float, start: float, rng: random.Random | None = None) -> None:
        self.mean = mean
        self.rng = rng or random.Random()
        self.next = start + self._gap() if mean > 0 else float("inf")

    def _gap(self) -> float:
        return self.mean * self.rng.uniform(0.5, 1.5)

    def advance(self) -> float:
        """Return the current due time and draw the next one."""
        t = self.next
        self.next = t + self._gap()
        return t
