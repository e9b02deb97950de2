"""The generators under test: how to install each one and the command line of one run.

Every tool runs the same scenario against the same server and reports through the same
marks (marks.py / node_client/marks.js). Modes:

- ``ack``: N connections, each in a room of its own, closed loop: send_message, wait
  for its ack, send the next (the server also echoes new_message to the sender's room);
- ``fanout``: N connections in rooms of M, each sending ``rate`` messages/s open loop;
  every message reaches the M-1 other members (a *measured delivery*) and its sender;
- ``idle``: N connections, connected and joined, nothing sent;
- ``rate``: N connections, each in a room of its own, each sending ``rate`` messages/s
  open loop (latency from the intended send time): every tool does the same work, so
  CPU per ack compares tools at *equal* load, not each at its own capacity.

``python-raw`` (raw_client.py) is a yardstick, not a load generator: the cheapest Python
Socket.IO client this machine allows (blocking connects, one epoll loop, no gevent, no
Locust, no ledger, no histograms beyond a sorted list of latencies), ack mode only. Its CPU
per ack is the floor against which the other tools' µs per ack are read on this machine.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_CLIENT = HERE / "node_client"
ARTILLERY_DIR = HERE / ".artillery"
ARTILLERY_VERSION = "2.0.34"
ARTILLERY_BIN = ARTILLERY_DIR / "node_modules" / "artillery" / "bin" / "run"
REPO = HERE.parent.parent  # the tools run from here: ``bench.generators`` and this roombench import
SERVER_DIR = REPO / "roombench" / "servers" / "node"

#: tool name -> which modes it runs (Artillery's engine measures acks only; SocketIOUser
#: has no fan-out latency of its own: it logs every received event with response time 0)
TOOLS: dict[str, tuple[str, ...]] = {
    "roombench-lean": ("ack", "fanout", "idle", "rate"),
    "roombench-compat": ("ack", "fanout", "idle", "rate"),
    "locust-socketio": ("ack", "idle"),
    "artillery": ("ack",),
    "node-client": ("ack", "fanout", "idle", "rate"),
    # the yardstick: what this machine allows a Python client at all (raw_client.py)
    "python-raw": ("ack", "rate"),
    # not run by default: the lean transport with a reader greenlet per connection (as
    # before roombench.transport.poller), to measure what the poller changed
    "roombench-lean-greenlet": ("ack", "fanout", "idle", "rate"),
    # not run by default: the lean transport with each user's send schedule in its own
    # greenlet (as before roombench.chat.clock), to measure what the one send loop changed
    "roombench-lean-usersend": ("ack", "fanout", "idle", "rate"),
}
DEFAULT_TOOLS = [t for t in TOOLS if t not in ("roombench-lean-greenlet", "roombench-lean-usersend")]
#: the generators py-spy can profile (run.py --profile); python-raw is a yardstick
PYTHON_TOOLS = ("roombench-lean", "roombench-compat", "locust-socketio", "roombench-lean-greenlet",
                "roombench-lean-usersend")
SIZE = 64  # bytes of message content, as roombench's default
#: roombench's --connect-timeout here: socket.io-client's default, which the Node client runs with
CONNECT_TIMEOUT_S = 20.0
#: ``tool@ref`` runs a Python tool from a checkout of git ``ref`` (run.py makes it): an
#: A/B of a hot-path change alternates old and new in one run, on the same server
CHECKOUTS: dict[str, Path] = {}


def split_tool(tool: str) -> tuple[str, str | None]:
    """``"roombench-lean@HEAD~1"`` -> ``("roombench-lean", "HEAD~1")``; no ``@``: ref None."""
    base, at, ref = tool.partition("@")
    return base, (ref if at else None)


def modes(tool: str) -> tuple[str, ...]:
    """The modes ``tool`` (``name`` or ``name@ref``) runs; () for an unknown name."""
    return TOOLS.get(split_tool(tool)[0], ())


@dataclass(frozen=True)
class Job:
    """One measured run of one tool."""

    tool: str
    mode: str
    connections: int
    processes: int = 1
    room_size: int = 1
    rate: float = 1.0  # fanout, rate: messages/s per connection
    ready_timeout: float = 60.0
    runtime: float = 120.0  # upper bound of the tool's own run time (s)


def _npm(args: list[str], env: dict[str, str] | None = None) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not on PATH: the Node tools need Node.js >= 20 and npm")
    print(f"installing: npm {' '.join(args)}", flush=True)
    subprocess.run([npm, *args, "--no-audit", "--no-fund", "--loglevel=error"], check=True,
                   env={**os.environ, **(env or {})}, timeout=900)


def ensure_installed(tools: list[str]) -> None:
    """Install on demand what the chosen tools need (the node server always)."""
    if not (SERVER_DIR / "node_modules" / "socket.io").is_dir():
        _npm(["ci", "--prefix", str(SERVER_DIR)])
    if "node-client" in tools or "artillery" in tools:
        if not (NODE_CLIENT / "node_modules" / "socket.io-client").is_dir():
            _npm(["ci", "--prefix", str(NODE_CLIENT)])
    if "artillery" in tools and not ARTILLERY_BIN.exists():
        # ~460 MB; Playwright's browser download (not needed here) cannot reach its CDN offline
        ARTILLERY_DIR.mkdir(exist_ok=True)
        _npm(["install", "--prefix", str(ARTILLERY_DIR), f"artillery@{ARTILLERY_VERSION}"],
             env={"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})


def command(job: Job, url: str, token: str, ctl: Path, workdir: Path) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) of one run of ``job``'s tool."""
    tool, ref = split_tool(job.tool)
    root = REPO if ref is None else CHECKOUTS[ref]
    argv, env = _command(job, tool, root, url, token, ctl, workdir)
    if ref is not None:  # the checkout's packages before the installed (editable) ones
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return argv, env, root


def _command(job: Job, tool: str, root: Path, url: str, token: str, ctl: Path,
             workdir: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "BENCH_CTL": str(ctl), "BENCH_USERS": str(job.connections // job.processes),
           "BENCH_READY_TIMEOUT": f"{job.ready_timeout:g}", "BENCH_SIZE": str(SIZE), "BENCH_MODE": job.mode,
           "BENCH_TOKEN": token, "BENCH_RATE": f"{job.rate:g}", "PYTHONUNBUFFERED": "1"}
    here = root / HERE.relative_to(REPO)
    if tool.startswith("roombench-"):
        if tool == "roombench-lean-greenlet":
            env["ROOMBENCH_READER"] = "greenlet"
        if tool == "roombench-lean-usersend":
            env["ROOMBENCH_SENDER"] = "greenlet"
        return _locust(job, url, here / "locust_roombench.py", _roombench_options(job, tool, token, root)), env
    if tool == "locust-socketio":
        return _locust(job, url, here / "locust_socketio_user.py", []), env
    if tool == "python-raw":
        return [sys.executable, "-m", "bench.generators.raw_client", "--url", url], env
    node = shutil.which("node") or "node"
    if tool == "node-client":
        # client.js's open loop is its fanout mode; in rooms of one only the acks come back
        mode = "fanout" if job.mode == "rate" else job.mode
        return [node, str(NODE_CLIENT / "client.js"), "--url", url, "--token", token, "--connections",
                str(job.connections), "--mode", mode, "--room-size", str(job.room_size),
                "--rate", f"{job.rate:g}", "--size", str(SIZE)], env
    if tool == "artillery":
        script = workdir / "artillery.yml"
        script.write_text(_artillery_script(job, url, token))
        env["ARTILLERY_DISABLE_TELEMETRY"] = "true"
        return [node, str(ARTILLERY_BIN), "run", "--quiet", str(script)], env
    raise SystemExit(f"unknown tool {job.tool!r}; known: {', '.join(TOOLS)}")


def _locust(job: Job, url: str, locustfile: Path, extra: list[str]) -> list[str]:
    spawn_rate = min(job.connections, 5000)
    argv = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
            "-u", str(job.connections), "-r", str(spawn_rate), "-t", f"{math.ceil(job.runtime)}s",
            "--host", url, "--loglevel", "WARNING", "--only-summary", "--stop-timeout", "5"]
    if job.processes > 1:
        argv += ["--processes", str(job.processes)]
    return argv + extra


def _roombench_options(job: Job, tool: str, token: str, root: Path = REPO) -> list[str]:
    mode = {
        "ack": ["--window", "1", "--room-size", "1", "--rate", "1"],
        "fanout": ["--window", "0", "--room-size", str(job.room_size), "--rate", f"{job.rate:g}"],
        "rate": ["--window", "0", "--room-size", "1", "--rate", f"{job.rate:g}"],
        "idle": ["--window", "0", "--room-size", "1", "--rate", "1e-6"],  # first send in ~days
    }[job.mode]
    return mode + ["--transport", tool.split("-")[1], "--token", token, "--ack", "callback",
                   "--size", str(SIZE), "--typing-every", "0", "--read-every", "0", "--drain", "2"] + (
        # socket.io-client's own timeout, as the Node client has it; a checkout older than the option lacks it
        ["--connect-timeout", f"{CONNECT_TIMEOUT_S:g}"]
        if "connect_timeout" in (root / "roombench" / "chat" / "scenario.py").read_text() else [])


def _artillery_script(job: Job, url: str, token: str) -> str:
    # bounded loop: enough iterations for 200k acks/s over the whole run, then it ends anyway
    count = math.ceil(200_000 * job.runtime / job.connections) + 100
    values = {"__TARGET__": url, "__PROCESSOR__": str(HERE / "artillery" / "processor.js"),
              "__RAMP_S__": str(max(1, math.ceil(job.connections / 2000))),
              "__CONNECTIONS__": str(job.connections), "__TOKEN__": token, "__COUNT__": str(count)}
    text = (HERE / "artillery" / "scenario.yml").read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text
