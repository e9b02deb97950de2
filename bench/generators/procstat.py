"""CPU and memory of processes, read from /proc (Linux only, no dependency).

CPU is ``utime + stime`` of /proc/<pid>/stat: every thread of the process, in clock
ticks (10 ms at the usual 100 Hz), so windows of a few seconds resolve to ~0.2 %.
A *tree* is a process and all its live descendants (Locust's master and workers,
Artillery's node process and its helpers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds in user and kernel mode."""

    user: float = 0.0
    system: float = 0.0

    @property
    def total(self) -> float:
        """user + system."""
        return self.user + self.system

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.user + other.user, self.system + other.system)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (or never was)
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def cpu(pid: int) -> Cpu:
    """CPU used so far by one process (all its threads); zero if it is gone."""
    f = _stat_fields(pid)
    if f is None:
        return Cpu()
    return Cpu(int(f[11]) * _TICK, int(f[12]) * _TICK)


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pid: int) -> Cpu:
    """CPU used so far by ``pid`` and its live descendants."""
    total = Cpu()
    for p in descendants(pid):
        total = total + cpu(p)
    return total


def machine_busy() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat, all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user and nice
    return (sum(fields) - idle - guest) * _TICK


def rss(pid: int) -> int:
    """Resident memory of one process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and its live descendants, in bytes (shared pages counted twice)."""
    return sum(rss(p) for p in descendants(pid))
