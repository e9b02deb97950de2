"""Process-tree helpers for the tests that check no process roombench started outlives it."""

from __future__ import annotations

import os
import time


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of ``pid`` from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parens
    return int(fields[1]), fields[0]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from a scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie is dead: only its exit status is left)."""
    return {pid for pid in pids if (st := _stat(pid)) is not None and st[1] not in ("Z", "X")}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s for all of ``pids`` to end; those still alive then."""
    deadline = time.monotonic() + timeout
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_for_descendants(pid: int, at_least: int, timeout: float) -> set[int]:
    """Descendants of ``pid`` once there are ``at_least`` of them (or ``timeout`` s passed)."""
    deadline = time.monotonic() + timeout
    while len(found := alive(descendants(pid))) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return found
