"""Distributed Locust: a master and two workers as separate processes on loopback.

`locust --master` with workers started separately (`--worker --master-host ...`), as on
several machines: one exact merged summary, rooms of the asked size whatever the worker
count, the same deterministic totals as one process, a dead worker reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from roombench.servers import free_port

from tests.helpers import REF_TOKEN

LOCUSTFILE = str(Path(__file__).parents[2] / "locustfiles" / "chat.py")
ENV = {**os.environ, "ROOMBENCH_TOKEN": REF_TOKEN}  # the token never on argv
SCENARIO = ["--room-size", "10", "--rate", "4", "--drain", "3", "--typing-every", "0", "--read-every", "0"]

pytestmark = pytest.mark.timeout(90)


class Procs:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--loglevel", "INFO", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    for proc in p.procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in p.procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_distributed(procs: Procs, host: str, out: Path, users: int, run_time: str,
                    kill_one_after: float | None = None, web_port: int | None = None) -> dict[str, Any]:
    port = free_port()
    # with a web UI: --autostart (headless has none), to read the master's live summary
    mode = ["--headless"] if web_port is None else ["--autostart", "--autoquit", "1", "--web-host", "127.0.0.1",
                                                    "--web-port", str(web_port)]
    master = procs.start("master", "--master", *mode, "--host", host, "-u", str(users), "-r", "50",
                         "-t", run_time, "--expect-workers", "2", "--master-bind-host", "127.0.0.1",
                         "--master-bind-port", str(port), "--summary-out", str(out / "summary.json"),
                         "--csv", str(out / "locust"), "--html", str(out / "report.html"), *SCENARIO)
    workers = [procs.start(f"worker{i}", "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
               for i in range(2)]
    if kill_one_after is not None:
        deadline = time.monotonic() + 30
        # Locust says "All users spawned", or, when the workers' reports come later than it
        # waits for them (a loaded machine), "Spawning is complete and report waittime is expired"
        while not any(done in procs.log("master") for done in ("All users spawned", "Spawning is complete")):
            assert time.monotonic() < deadline and master.poll() is None, procs.log("master")
            time.sleep(0.2)
        if web_port is not None:  # the master's live summary merges both workers' live reports
            live = wait_live(web_port, lambda s: len(s["metadata"]["locust"]["workers"]) == 2
                             and any(p["ack_p99_ms"] for p in s["metadata"]["locust"]["series"]))
            assert live["metadata"]["locust"]["state"] == "running" and live["metadata"]["users"] == 20
            assert live["latency_ms"]["ack"]["count"] > 0
        time.sleep(kill_one_after)
        workers[1].send_signal(signal.SIGKILL)  # dies without a word, as a lost machine does
    master.wait(60)
    assert (out / "summary.json").exists(), procs.log("master")
    return orjson.loads((out / "summary.json").read_bytes())


def wait_live(web_port: int, pred: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(f"http://127.0.0.1:{web_port}/roombench/summary", timeout=5)
        if resp.status_code == 200 and pred(resp.json()):
            return resp.json()
        assert time.monotonic() < deadline, resp.text[:300]
        time.sleep(0.3)


def test_master_and_two_workers_merge_exactly_with_whole_rooms(ref_server: Any, procs: Procs, tmp_path: Path) -> None:
    # 10 users asked for rooms of 10 on 2 workers: rounded to 20 (a whole room per worker)
    summary = run_distributed(procs, ref_server.url, tmp_path, users=10, run_time="4s")
    meta, d = summary["metadata"], summary["delivery"]
    workers = meta["locust"]["workers"]
    assert [w["users"] for w in workers] == [10, 10]
    assert meta["users"] == 20 and meta["generator"]["processes"] == 2
    assert meta["locust"]["room_sizes"] == {"10": 2}
    assert any("users rounded from 10 to 20" in n for n in meta["locust"]["notices"])
    assert "users rounded from 10 to 20" in procs.log("master")
    # full rooms: a message is expected by the 9 other members (fewer only while the
    # room still fills at the start; rooms of 5 would give at most 4)
    assert d["sent"] > 0 and 8.5 * d["sent"] < d["expected"] <= 9 * d["sent"]
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["ack_timeouts"] == 0
    assert d["delivered_live"] + d["recovered"] == d["expected"]
    # exact merge: the merged histograms hold every worker's samples
    assert summary["latency_ms"]["ack"]["count"] == d["acked"]
    assert summary["latency_ms"]["fanout"]["count"] == d["delivered_live"]
    # the chart: one point per interval, both workers' interval histograms added
    series = meta["locust"]["series"]
    assert len(series) >= 3 and max(p["deliveries_per_s"] for p in series) > 0
    # Locust's own reports carry roombench's numbers too
    csv = (tmp_path / "locust_roombench.csv").read_text()
    assert f"delivery,sent,{d['sent']}" in csv and "latency,ack," in csv
    assert f"<td>sent</td><td>{d['sent']}</td>" in (tmp_path / "report.html").read_text()

    # one process, same scenario and user count: the same deterministic totals
    one = tmp_path / "one"
    local = procs.start("local", "--headless", "--host", ref_server.url, "-u", "20", "-r", "50", "-t", "3s",
                        "--summary-out", str(one / "summary.json"), *SCENARIO)
    local.wait(60)
    single = orjson.loads((one / "summary.json").read_bytes())
    s = single["delivery"]
    assert single["metadata"]["users"] == meta["users"]
    assert single["metadata"]["locust"]["room_sizes"] == meta["locust"]["room_sizes"] == {"10": 2}
    assert 8.5 * s["sent"] < s["expected"] <= 9 * s["sent"] and s["lost"] == d["lost"] == 0
    assert s["duplicates"] == d["duplicates"] and s["delivered_live"] + s["recovered"] == s["expected"]


def test_a_dead_worker_is_reported_and_the_rest_stands(ref_server: Any, procs: Procs, tmp_path: Path) -> None:
    summary = run_distributed(procs, ref_server.url, tmp_path, users=20, run_time="12s", kill_one_after=2,
                              web_port=free_port())
    meta, d = summary["metadata"], summary["delivery"]
    dead = meta["locust"]["dead_workers"]
    assert len(dead) == 1 and dead[0]["users"] == 10 and dead[0]["sent"] > 0, dead
    assert f"worker {dead[0]['id']} stopped reporting (its last report" in procs.log("master")
    # the surviving worker's numbers stand: its rooms are whole, its messages all arrive
    assert meta["users"] == 10 and meta["generator"]["processes"] == 1
    assert meta["locust"]["room_sizes"] == {"10": 1}
    assert d["sent"] > 0 and 8.5 * d["sent"] < d["expected"] <= 9 * d["sent"] and d["lost"] == 0
