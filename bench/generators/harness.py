"""One measurement: a fresh node server, one tool run, one window, the figures of it.

The server is started anew for every measurement (its in-memory store grows with every
message; a fresh one gives every tool the same server). The tool connects, says
``ready`` (marks.py), and this process writes the window (wall-clock start and end) to
the control file; it reads the tool's and the server's CPU (psutil) at exactly those
instants while the tool counts acks / deliveries between them.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.generators import pyspy
from bench.generators.marks import sleep_until
from bench.generators.tools import Job, command
from roombench.measure.summary import write_json
from roombench.servers import start_server

TOKEN = "genbench"
STARTUP_S = 30.0  # a tool's own start (imports, Artillery's boot) before its first mark


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


def cpu(pid: int) -> Cpu:
    """CPU used so far by one process (all its threads); zero if it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return Cpu()
    return Cpu(t.user, t.system)


def tree_cpu(pid: int) -> Cpu:
    """CPU used so far by ``pid`` and its live descendants (Locust's workers, Artillery's helpers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return Cpu()
    total = Cpu()
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total = total + Cpu(t.user, t.system)
    return total


def machine_busy() -> float:
    """CPU seconds all cores spent busy so far (all but idle and iowait; guest is inside user)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - t.iowait - t.guest - t.guest_nice


class Marks:
    """The ``@@bench`` lines of a tool's stdout, read by a thread; the rest kept as a tail."""

    def __init__(self, proc: subprocess.Popen[bytes], server_pid: int) -> None:
        self.proc = proc
        self.server_pid = server_pid
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("@@bench "):
                self.q.put(json.loads(line[8:]))
            else:
                self.tail = (self.tail + [line])[-30:]

    def wait(self, event: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """The first ``count`` marks named ``event``; raises RuntimeError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.seen.get(event, [])) < count:
            try:
                m = self.q.get(timeout=max(0.01, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    tail = "\n".join(self.tail[-10:])
                    raise RuntimeError(f"no {event!r} mark ({len(self.seen.get(event, []))}/{count}) "
                                       f"within {timeout:g} s; exit code {self.proc.poll()}; output tail:\n{tail}")
                continue
            m["received"] = time.time()
            m["tree_cpu"] = tree_cpu(self.proc.pid)
            m["server_cpu"] = cpu(self.server_pid).total
            self.seen.setdefault(m["ev"], []).append(m)
        return self.seen[event][:count]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the tool's process tree: its figures are in, and a graceful stop (Locust
    draining and closing 20,000 sessions) would only cost the benchmark minutes."""
    try:  # collected first: once the group is dead, its orphans are no longer below proc
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        below = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool leads its own session (start_new_session)
    except ProcessLookupError:
        pass
    for p in below:  # anything that left the group (its own setsid)
        try:
            if os.getpgid(p.pid) != proc.pid:
                p.kill()  # psutil checks the pid was not reused
        except (ProcessLookupError, psutil.Error):
            pass
    proc.wait()


#: --pin: the CPU of the server and the one of the generator
SERVER_CPU, GENERATOR_CPU = 1, 0


def can_pin(job: Job) -> bool:
    """Whether ``--pin`` applies to ``job``: one generator process, and two CPUs to give."""
    return job.processes == 1 and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin_tree(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` and of its descendants onto ``cpu`` (threads started later
    inherit it from the one that starts them); processes already gone are skipped."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            tids = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except OSError:  # the thread ended meanwhile
                pass


def measure(job: Job, warmup: float, duration: float, profile_to: Path | None = None,
            pin: bool = False) -> dict[str, Any]:
    """Run ``job`` once; its figures (see :func:`_figures`), or ``{"error": ...}``.

    ``profile_to``: a py-spy profile of the window goes there (Python tools, one process).
    ``pin`` (where :func:`can_pin`): the server's threads on one CPU and the generator's on
    the other, so neither is moved about nor shares a core's caches with the other: on a
    shared 2-core machine the rounds then scatter less (see README, Generator performance).
    """
    with tempfile.TemporaryDirectory(prefix="genbench-") as tmp:
        workdir = Path(tmp)
        server = start_server("node", token=TOKEN, log_path=str(workdir / "server.log"))
        ctl = workdir / "ctl.json"
        argv, env, cwd = command(job, server.url, TOKEN, ctl, workdir)
        with open(workdir / "stderr.log", "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd,
                                    start_new_session=True)
        marks = Marks(proc, server.pid)
        pin = pin and can_pin(job)
        if pin:
            pin_tree(server.pid, SERVER_CPU)
            pin_tree(proc.pid, GENERATOR_CPU)
        try:
            marks.wait("before", job.processes, STARTUP_S)
            marks.wait("ready", job.processes, job.ready_timeout + STARTUP_S)
            if pin:  # threads and processes started since (Node's workers, Locust's)
                pin_tree(server.pid, SERVER_CPU)
                pin_tree(proc.pid, GENERATOR_CPU)
            t_start = time.time() + warmup
            t_end = t_start + duration
            write_json(ctl, {"start": t_start, "end": t_end})
            sleep_until(t_start)
            g0, s0, m0, w0 = tree_cpu(proc.pid), cpu(server.pid), machine_busy(), time.time()
            spy = None
            if profile_to is not None and job.processes == 1 and job.tool not in ("artillery", "node-client"):
                spy = pyspy.start(proc.pid, duration - 0.2, profile_to)
            sleep_until(t_end)
            g1, s1, m1, w1 = tree_cpu(proc.pid), cpu(server.pid), machine_busy(), time.time()
            marks.wait("end", job.processes, 30)
            marks.wait("start", job.processes, 1)
            out = _figures(job, marks.seen, g1 - g0, (s1 - s0).total, w1 - w0)
            out["pinned"] = pin
            # what else ran on the machine meanwhile (other users of a shared machine, this script)
            out["other_cpu_pct"] = round(100 * ((m1 - m0) - (g1 - g0).total - (s1 - s0).total) / (w1 - w0), 1)
            if spy is not None and spy.wait(30) == 0 and profile_to is not None and profile_to.exists():
                out["profile"] = {"file": str(profile_to), **pyspy.top(profile_to)}
            return out
        except RuntimeError as exc:
            err_tail = (workdir / "stderr.log").read_text(errors="replace")[-1500:]
            return {"error": f"{exc}\nstderr tail:\n{err_tail}"}
        finally:
            _stop(proc)
            server.stop()


def _figures(job: Job, seen: dict[str, list[dict[str, Any]]], gen: Cpu, server_cpu: float,
             wall: float) -> dict[str, Any]:
    """Per-window figures, summed over the tool's processes."""
    starts = {m["pid"]: m for m in seen["start"]}
    ends = seen["end"]
    acks_s = sum(e["acks"] / max(1e-6, e["t"] - starts[e["pid"]]["t"]) for e in ends)
    deliveries_s = sum(e["deliveries"] / max(1e-6, e["t"] - starts[e["pid"]]["t"]) for e in ends)
    cpu_s = gen.total / wall
    out: dict[str, Any] = {
        "tool": job.tool, "mode": job.mode, "connections": job.connections, "processes": job.processes,
        "room_size": job.room_size, "rate": job.rate if job.mode in ("fanout", "rate") else None,
        "window_s": round(wall, 3),
        "connected": sum(m["connected"] for m in seen["ready"]),
        "acks_per_s": round(acks_s, 1), "deliveries_per_s": round(deliveries_s, 1),
        "gen_cpu_pct": round(100 * cpu_s, 1), "gen_user_pct": round(100 * gen.user / wall, 1),
        "gen_sys_pct": round(100 * gen.system / wall, 1), "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "us_cpu_per_ack": round(1e6 * cpu_s / acks_s, 2) if acks_s else None,
        "us_cpu_per_delivery": round(1e6 * cpu_s / deliveries_s, 2) if deliveries_s else None,
        # the server's CPU per ack in the same window, and what one generator core buys:
        # gen_to_server 0.25 = one generator core loads four server cores
        "server_us_cpu_per_ack": round(1e6 * server_cpu / wall / acks_s, 2) if acks_s else None,
        "gen_to_server": round(gen.total / server_cpu, 3) if server_cpu > 0 and acks_s else None,
        "lat": _latency(ends), "errors": _errors(ends),
    }
    if job.mode == "idle":
        out.update(_idle(seen))
    return out


def _latency(ends: list[dict[str, Any]]) -> dict[str, Any]:
    if len(ends) == 1 or not all(e.get("hdr") for e in ends):
        if len(ends) == 1:
            return ends[0]["lat"]
        return {"per_process": [e["lat"] for e in ends]}
    from hdrh.histogram import HdrHistogram

    from roombench.measure.metrics import add_histogram, new_histogram, percentiles

    out = {}
    for name in ends[0]["hdr"]:
        merged = new_histogram()
        for e in ends:
            if e["hdr"].get(name):
                add_histogram(merged, HdrHistogram.decode(e["hdr"][name]))
        p = percentiles(merged, [50.0, 99.0]) if merged.total_count else {50.0: 0, 99.0: 0}
        out[name] = {"n": merged.total_count, "p50_ms": p[50.0] / 1000, "p99_ms": p[99.0] / 1000}
    return out


def _errors(ends: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for e in ends:
        for k, v in (e.get("errors") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return {k: v for k, v in total.items() if v}


def _idle(seen: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Memory and connect figures: before -> ready of each process."""
    before = {m["pid"]: m for m in seen["before"]}
    rss, secs, cpu, server, n = 0, 0.0, 0.0, 0.0, 0
    for r in seen["ready"]:
        b = before[r["pid"]]
        rss += r["rss"] - b["rss"]
        secs = max(secs, r["t"] - b["t"])
        cpu += r["tree_cpu"].total - b["tree_cpu"].total
        server += r["server_cpu"] - b["server_cpu"]
        n += r["connected"]
    return {"rss_per_conn_kb": round(rss / max(n, 1) / 1024, 2), "connects_per_s": round(n / max(secs, 1e-6), 1),
            "us_cpu_per_connect": round(1e6 * cpu / max(n, 1), 1), "connect_s": round(secs, 2),
            "server_us_cpu_per_connect": round(1e6 * server / max(n, 1), 1),
            "server_connect_cpu_pct": round(100 * server / max(secs, 1e-6), 1)}
