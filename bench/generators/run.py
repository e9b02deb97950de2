"""Generator benchmark: roombench against Locust's SocketIOUser, Artillery and Node's client.

    python -m bench.generators.run [--quick] [--rounds 3] [--suites ack,fanout,idle,processes]

In ONE run, on the same server (Node's official socket.io 4.8, one process, started
fresh for every measurement) and the same load, alternating the tools round by round:

- ack: acks/s, generator CPU per ack, p50/p99 at 10, 50, 200, 1000 connections,
  each connection waiting for its ack before sending again;
- fanout: deliveries/s and CPU per delivery in rooms of 10 and 100 (open loop);
- idle: connections held (up to 20,000, or what the open-file limit allows), RSS per
  connection, connects/s;
- processes: roombench-lean with ``locust --processes 2`` against one process;
- equal: the same offered open-loop rate for every tool (5,000 and 15,000 acks/s over
  50 connections, each in a room of its own): generator CPU per ack at *equal work*, and
  the generator-to-server ratio (generator CPU per ack / the Node server's, same window).

Every figure is per generator process with the server's CPU beside it. Above ~50k acks/s
the server, not the generator, is the limit; CPU per ack is then the figure that compares
generators (capacity per core = 10^6 / µs per ack). Writes results/<timestamp>.json
(schema roombench.genbench/1) and .md, and prints the markdown. Installs the node
server's, the Node client's and Artillery's packages on demand (Artillery: ~460 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.generators import genreport as report
from bench.generators.harness import measure
from bench.generators.tools import (
    ARTILLERY_VERSION,
    DEFAULT_TOOLS,
    HERE,
    PYTHON_TOOLS,
    REPO,
    TOOLS,
    Job,
    ensure_installed,
    modes,
    split_tool,
)
from bench.generators.checkouts import checkouts
from roombench.measure.machine import machine_info
from roombench.measure.summary import write_json

SCHEMA = "roombench.genbench/1"
FANOUT_USERS = 100
PROCESSES_CONNECTIONS = 100


def _raise_fd_limit() -> int:
    """Soft open-file limit up to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; --quick shrinks every default to a ~3 minute smoke run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round, 3 s windows, 50 connections, rooms of 10, 2,000 idle")
    p.add_argument("--rounds", type=int, help="alternating rounds per figure (default 3)")
    p.add_argument("--duration", type=float, help="seconds per measured window (default 5)")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds between ready and the window")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help="comma-separated, of: " + ", ".join(TOOLS) + "; a Python one as NAME@GIT-REF runs from a "
                   "checkout of that commit (A/B: roombench-lean,roombench-lean@HEAD~1)")
    p.add_argument("--suites", default="ack,fanout,idle,processes,equal")
    p.add_argument("--connections", help="ack suite connection counts (default 10,50,200,1000)")
    p.add_argument("--fanout-rooms", help="fan-out room sizes (default 10,100)")
    p.add_argument("--fanout-deliveries", default="30000,90000",
                   help="offered measured deliveries/s in the fan-out suite, one measurement each "
                   "(sets each user's rate): one the server keeps up with, and the issue's 80k+")
    p.add_argument("--equal-rates", default="5000,15000",
                   help="equal suite: offered acks/s, every tool the same (open loop, rooms of one)")
    p.add_argument("--equal-connections", type=int, default=50, help="equal suite: connections (default 50)")
    p.add_argument("--idle-connections", type=int, help="idle suite connections (default 20000, capped by the fd limit)")
    p.add_argument("--pin", action="store_true",
                   help="the server on CPU 1 and the generator on CPU 0 (one-process jobs on a machine "
                   "with 2+ CPUs): less scatter between rounds on a shared machine")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--rereport", type=Path, metavar="JSON",
                   help="measure nothing: re-derive medians, ratios, targets and the .md of an earlier "
                   "results JSON (after a change to genreport.py)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy profiles (pip install py-spy): one extra round of each Python generator "
                   "at 50 connections, apart from the measured ones (py-spy's CPU would slow the shared "
                   "server); raw stacks in results/<timestamp>-profiles/, top functions in the JSON")
    a = p.parse_args(argv)
    quick = a.quick
    a.rounds = max(1, min(a.rounds or (1 if quick else 3), 10))
    a.duration = max(1.0, min(a.duration or (3.0 if quick else 5.0), 60.0))
    a.connections = _ints(a.connections or ("50" if quick else "10,50,200,1000"))
    a.fanout_rooms = _ints(a.fanout_rooms or ("10" if quick else "10,100"))
    a.fanout_deliveries = _ints(a.fanout_deliveries)
    a.equal_rates = _ints(a.equal_rates)
    if a.equal_connections < 1 or any(r <= 0 for r in a.equal_rates):
        p.error("--equal-connections and --equal-rates must be positive")
    a.idle_connections = a.idle_connections or (2000 if quick else 20_000)
    a.tools = [t for t in a.tools.split(",") if t]
    a.suites = [s for s in a.suites.split(",") if s]
    unknown = [t for t in a.tools if not modes(t)]
    if unknown:
        p.error(f"unknown tool(s) {unknown}; known: {', '.join(TOOLS)} (a Python one also as NAME@GIT-REF)")
    not_python = [t for t in a.tools if split_tool(t)[1] is not None and split_tool(t)[0] not in PYTHON_TOOLS]
    if not_python:
        p.error(f"NAME@GIT-REF runs a Python generator from a checkout of REF; not {not_python}")
    if len(set(a.tools)) < len(a.tools):
        p.error(f"--tools names a tool twice: {a.tools}")
    return a


def plan(a: argparse.Namespace, fd_cap: int) -> list[tuple[str, int, Job]]:
    """(suite, round, job) in run order: every suite's rounds alternate the tools' order."""
    out: list[tuple[str, int, Job]] = []
    idle_n = min(a.idle_connections, fd_cap - 200)  # the generator's own fds need room too
    for rnd in range(a.rounds):
        order = a.tools if rnd % 2 == 0 else a.tools[::-1]
        if "ack" in a.suites:
            out += [("ack", rnd, Job(t, "ack", n)) for n in a.connections for t in order if "ack" in modes(t)]
        if "fanout" in a.suites:
            for m in a.fanout_rooms:
                for offered in a.fanout_deliveries:
                    rate = round(offered / (FANOUT_USERS * (m - 1)), 3)
                    out += [("fanout", rnd, Job(t, "fanout", FANOUT_USERS, room_size=m, rate=rate))
                            for t in order if "fanout" in modes(t)]
        if "idle" in a.suites and rnd == 0:  # one round: minutes per tool at 20k connections
            out += [("idle", rnd, Job(t, "idle", idle_n, ready_timeout=150, runtime=300))
                    for t in order if "idle" in modes(t)]
        if "equal" in a.suites:
            n = a.equal_connections
            out += [("equal", rnd, Job(t, "rate", n, rate=round(offered / n, 3)))
                    for offered in a.equal_rates for t in order if "rate" in modes(t)]
        if "processes" in a.suites and "roombench-lean" in a.tools:
            procs = (1, 2) if rnd % 2 == 0 else (2, 1)
            out += [("processes", rnd, Job("roombench-lean", "ack", PROCESSES_CONNECTIONS, processes=p))
                    for p in procs]
    if a.profile and "ack" in a.suites:
        # profiled apart from the measured rounds: py-spy's own CPU (5-30 % of a core here)
        # would slow the server they share 2 cores with, and only the Python tools' rounds
        n = 50 if 50 in a.connections else a.connections[0]
        out += [("profile", 0, Job(t, "ack", n)) for t in a.tools if split_tool(t)[0] in PYTHON_TOOLS]
    if a.profile and "equal" in a.suites:
        # at equal load the per-wake-up costs (parking, timers) show, which a closed loop hides
        n, offered = a.equal_connections, a.equal_rates[0]
        out += [("profile-equal", 0, Job(t, "rate", n, rate=round(offered / n, 3)))
                for t in a.tools if split_tool(t)[0] in PYTHON_TOOLS]
    return out


def _versions() -> dict[str, Any]:
    lock = json.loads((HERE / "node_client" / "package-lock.json").read_text())
    server_lock = json.loads((REPO / "roombench/servers/node/package-lock.json").read_text())
    return {"artillery": ARTILLERY_VERSION,
            "socket.io-client": lock["packages"]["node_modules/socket.io-client"]["version"],
            "socket.io (server)": server_lock["packages"]["node_modules/socket.io"]["version"]}


def _write(doc: dict[str, Any], out: Path, stamp: str) -> Path:
    path = out / f"{stamp}.json"
    write_json(path, doc)
    return path


def finish(doc: dict[str, Any], fd_cap: int) -> None:
    """Medians, ratios, targets and the scaling sentence from the runs so far."""
    rows = doc["medians"] = report.medians(doc["runs"])
    doc["ratios"] = report.ratios(rows)
    doc["targets"] = report.targets(rows, fd_cap)
    doc["cost_targets"] = report.cost_targets(doc)
    one = report._find(rows, "processes", "roombench-lean", processes=1)
    two = report._find(rows, "processes", "roombench-lean", processes=2)
    if one and two and one["acks_per_s"]:
        doc["scaling"] = (
            f"2 processes give {two['acks_per_s'] / one['acks_per_s']:.2f}x the acks/s of 1 "
            f"({two['acks_per_s']:,.0f} vs {one['acks_per_s']:,.0f}) with the server at {two['server_cpu_pct']:.0f} % vs "
            f"{one['server_cpu_pct']:.0f} % of a core and the generators at {two['gen_cpu_pct']:.0f} % vs "
            f"{one['gen_cpu_pct']:.0f} %: on {doc['machine']['cores']} cores shared with the server, a second "
            "generator process only adds what the server and the core it shares leave over.")


def rereport(path: Path) -> int:
    """Rewrite ``path`` (and its .md) from its raw runs with the current report code."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}, expected {SCHEMA!r}")
        finish(doc, int(doc["fd_limit"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"run.py: error: cannot re-report {path}: {exc}", file=sys.stderr)
        return 2
    _write(doc, path.parent, path.stem)
    text = report.markdown(doc)
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the plan, writing the JSON after every measurement; print the markdown."""
    a = parse_args(argv)
    if a.rereport is not None:
        return rereport(a.rereport)
    fd_cap = _raise_fd_limit()
    ensure_installed([split_tool(t)[0] for t in a.tools])
    with checkouts([ref for t in a.tools if (ref := split_tool(t)[1]) is not None]) as commits:
        return _run(a, fd_cap, commits)


def _run(a: argparse.Namespace, fd_cap: int, commits: dict[str, str]) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    doc: dict[str, Any] = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(), "versions": _versions(), "fd_limit": fd_cap,
        "server": "Node socket.io 4.8 (roombench/servers/node, one process, fresh per measurement)",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "runs": [],
    }
    if commits:  # tool@ref: which commit each ref named when it ran
        doc["checkouts"] = commits
    jobs = plan(a, fd_cap)
    print(f"genbench: {len(jobs)} measurements; results in {a.out}/{stamp}.json", flush=True)
    profiles = a.out / f"{stamp}-profiles"
    if a.profile:
        profiles.mkdir(parents=True, exist_ok=True)
    for i, (suite, rnd, job) in enumerate(jobs, 1):
        spy = profiles / f"{suite}-{job.tool.replace('/', '_')}-n{job.connections}-m{job.room_size}-p{job.processes}-r{rnd}.txt"
        result = measure(job, a.warmup, a.duration if suite != "idle" else min(a.duration, 3.0),
                         spy if suite.startswith("profile") else None, pin=a.pin)
        result.update(suite=suite, round=rnd, tool=job.tool, connections=job.connections,
                      room_size=job.room_size, processes=job.processes,
                      rate=job.rate if job.mode in ("fanout", "rate") else None)
        doc["runs"].append(result)
        print(f"[{i}/{len(jobs)}] {_line(result)}", flush=True)
        finish(doc, fd_cap)
        path = _write(doc, a.out, stamp)
    text = report.markdown(doc)
    path.with_suffix(".md").write_text(text + "\n")
    print("\n" + text)
    return 0


def _line(r: dict[str, Any]) -> str:
    head = f"{r['suite']:9s} {r['tool']:16s} n={r['connections']:<5d} m={r['room_size']:<3d} p={r['processes']}"
    if "error" in r:
        return f"{head} ERROR {r['error'].splitlines()[0]}"
    if r["suite"] == "idle":
        return (f"{head} held {r['connected']} rss {r['rss_per_conn_kb']} KB/conn {r['connects_per_s']:.0f} conn/s")
    lat = r["lat"].get("fanout" if r["suite"] == "fanout" else "ack", {})
    if r["suite"] in ("equal", "profile-equal"):
        return (f"{head} offered {r['connections'] * r['rate']:.0f}/s: {r['acks_per_s']:.0f} acks/s, {r['us_cpu_per_ack']} µs "
                f"CPU each (server {r['server_us_cpu_per_ack']} µs, ratio {r['gen_to_server']}), "
                f"p99 {lat.get('p99_ms', 0):.2f} ms")
    rate = r["deliveries_per_s"] if r["suite"] == "fanout" else r["acks_per_s"]
    per = r["us_cpu_per_delivery"] if r["suite"] == "fanout" else r["us_cpu_per_ack"]
    return (f"{head} {rate:9.0f}/s {per} µs CPU each, p50 {lat.get('p50_ms', 0):.2f} p99 {lat.get('p99_ms', 0):.2f} ms, "
            f"gen {r['gen_cpu_pct']:.0f} % server {r['server_cpu_pct']:.0f} %")


if __name__ == "__main__":
    sys.exit(main())
