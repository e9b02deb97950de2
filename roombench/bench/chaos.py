"""Faults on a schedule: kill / restart / pause the server roombench started, during a run.

A spec is comma-separated items::

    kill-every=4s,down=1s      SIGKILL the app server process(es) every 4 s, restart after 1 s
    pause-every=5s,for=2s      SIGSTOP every 5 s, SIGCONT 2 s later
    kill@8s,restart@11s        one-off actions at those times (also pause@T, resume@T)

Times are seconds (``4``, ``4s``, ``500ms``), counted from the run's start (summary.json
``metadata.started``, the moment the load begins; warmup included), which `roombench run`
learns from the first live.json, written when the first 1 s interval closes: an action due
before that is taken then. Counting from the Locust child's launch instead would let a slow
start (seconds on a loaded machine) eat the schedule, so a fault meant for the load would
hit a server nobody talks to yet.
A periodic kill or pause is taken only before the run's end, and always undone, so the drain
meets a live server. Backing services (redis-server of the *-redis variants) stay up: only the
app processes are hit. Every action taken is recorded as ``{"at": epoch s, "action": ...}``
(a failed restart with its ``error``); `roombench run` turns ``at`` into ``t``, seconds since
the run's own start (summary.json ``metadata.started``), for ``metadata.chaos``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roombench.exceptions import RoombenchError, UsageError
from roombench.servers import ServerProcess

_PERIODIC = {"kill-every": "down", "pause-every": "for"}
_ONE_OFF = ("kill", "restart", "pause", "resume")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")
#: the state each action needs, and the state it leaves
_NEEDS = {"kill": "up", "restart": "down", "pause": "up", "resume": "paused"}
_LEAVES = {"kill": "down", "restart": "up", "pause": "paused", "resume": "up"}
#: longest the schedule waits to learn the run's start before it counts from its own
ORIGIN_WAIT_S = 30.0


@dataclass(frozen=True)
class ChaosPlan:
    """A parsed --chaos spec: one-off actions and at most one periodic rule."""

    spec: str
    at: tuple[tuple[float, str], ...] = ()
    every: float = 0.0  # 0: no periodic rule
    periodic: str = ""  # "kill" or "pause"
    hold: float = 1.0  # down / for

    def schedule(self, horizon: float) -> list[tuple[float, str]]:
        """Every action up to ``horizon`` s, in time order."""
        events = [e for e in self.at if e[0] <= horizon]
        if self.every:
            undo = "restart" if self.periodic == "kill" else "resume"
            k = 1
            while k * self.every < horizon:
                events += [(k * self.every, self.periodic), (k * self.every + self.hold, undo)]
                k += 1
        return sorted(events)


def _seconds(spec: str, key: str, text: str) -> float:
    m = _DURATION.match(text)
    value = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else math.nan
    if not (math.isfinite(value) and 0 < value <= 7 * 86400):
        raise UsageError(f"bad chaos spec {spec!r}: {key} needs a time > 0 like 4s or 500ms, got {text!r}")
    return value


def parse_chaos(spec: str) -> ChaosPlan:
    """The plan of ``spec``; UsageError (one line) for anything wrong in it."""
    known = "kill-every=T,down=T | pause-every=T,for=T | kill@T restart@T pause@T resume@T"
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"bad chaos spec {spec!r}: empty (known: {known})")
    at: list[tuple[float, str]] = []
    keys: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if "@" in item:
            action, _, when = item.partition("@")
            if action.strip() not in _ONE_OFF:
                raise UsageError(f"bad chaos spec {spec!r}: unknown action {action.strip()!r} (known: {known})")
            at.append((_seconds(spec, action.strip(), when), action.strip()))
        elif "=" in item:
            key, _, value = (x.strip() for x in item.partition("="))
            if key not in (*_PERIODIC, *_PERIODIC.values()):
                raise UsageError(f"bad chaos spec {spec!r}: unknown key {key!r} (known: {known})")
            if key in keys:
                raise UsageError(f"bad chaos spec {spec!r}: {key} given twice")
            keys[key] = _seconds(spec, key, value)
        else:
            raise UsageError(f"bad chaos spec {spec!r}: {item!r} is neither key=T nor action@T (known: {known})")
    periodic = [k for k in _PERIODIC if k in keys]
    if len(periodic) > 1:
        raise UsageError(f"bad chaos spec {spec!r}: give kill-every or pause-every, not both")
    plan = ChaosPlan(spec, tuple(sorted(at)))
    if periodic:
        every, hold_key = periodic[0], _PERIODIC[periodic[0]]
        stray = next((k for k in _PERIODIC.values() if k in keys and k != hold_key), None)
        if stray:
            raise UsageError(f"bad chaos spec {spec!r}: {stray} goes with "
                             f"{next(k for k, v in _PERIODIC.items() if v == stray)}, not {every}")
        hold = keys.get(hold_key, 1.0)
        if hold >= keys[every]:
            raise UsageError(f"bad chaos spec {spec!r}: {hold_key} ({hold:g} s) must be shorter than {every} "
                             f"({keys[every]:g} s)")
        if at:
            raise UsageError(f"bad chaos spec {spec!r}: give {every} or one-off action@T items, not both")
        plan = ChaosPlan(spec, (), keys[every], every.split("-")[0], hold)
    elif keys:
        raise UsageError(f"bad chaos spec {spec!r}: {next(iter(keys))} needs kill-every or pause-every")
    state = "up"
    for t, action in plan.at:
        if _NEEDS[action] != state:
            raise UsageError(f"bad chaos spec {spec!r}: {action}@{t:g}s while the server is {state}")
        state = _LEAVES[action]
    return plan


class Chaos:
    """Runs a plan against ``server`` in a thread: ``start()`` when the run starts, ``stop()``
    when it ends (which leaves the server up and running again, for the next step of a sweep)."""

    def __init__(self, plan: ChaosPlan, server: ServerProcess, horizon: float) -> None:
        self.plan, self.server, self.horizon = plan, server, horizon
        self.actions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="roombench-chaos", daemon=True)
        self._t0 = 0.0
        self._origin: Callable[[], float | None] | None = None
        self._state = "up"

    def start(self, origin: Callable[[], float | None] | None = None) -> None:
        """Run the schedule from now, or from ``origin()``: the run's start (epoch s), which it
        returns once known (None until then). Unknown for :data:`ORIGIN_WAIT_S`: from now."""
        self._t0 = time.monotonic()
        self._origin = origin
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        """Stop the schedule, bring the server back; the actions taken."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            if self._state == "paused":
                self.server.resume()
            elif self._state == "down":
                self.server.restart()
        except RoombenchError:
            pass  # the caller stops the server, or the next step reports it down
        self._state = "up"
        return self.actions

    def _wait_for_origin(self) -> bool:
        """Set ``_t0`` to the run's start; False when stopped first."""
        if self._origin is None:
            return True
        give_up = time.monotonic() + ORIGIN_WAIT_S
        while time.monotonic() < give_up:
            started = self._origin()
            if started is not None:
                self._t0 = time.monotonic() - (time.time() - started)
                return True
            if self._stop.wait(0.1):
                return False
        self._t0 = time.monotonic()
        return True

    def _loop(self) -> None:
        if not self._wait_for_origin():
            return
        for t, action in self.plan.schedule(self.horizon):
            if self._stop.wait(max(0.0, self._t0 + t - time.monotonic())):
                return
            if _NEEDS[action] != self._state:  # e.g. a restart that failed: wait for the next one
                continue
            record: dict[str, Any] = {"at": time.time(), "action": action}
            try:
                getattr(self.server, action)()
                self._state = _LEAVES[action]
            except RoombenchError as exc:
                record["error"] = str(exc).splitlines()[0]
            self.actions.append(record)
