"""The generator benchmark's own parts: the yardstick's open loop and the round-paired ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.generators.genreport import cost_targets, ratio_range
from roombench.servers import ServerProcess
from tests.conftest import REF_TOKEN

REPO = Path(__file__).resolve().parent.parent


def test_raw_client_rate_mode_offers_its_rate_open_loop(ref_server: ServerProcess, tmp_path: Path) -> None:
    ctl = tmp_path / "ctl.json"
    start = time.time() + 3.0
    ctl.write_text(json.dumps({"start": start, "end": start + 1.0}))
    env = {**os.environ, "BENCH_CTL": str(ctl), "BENCH_USERS": "5", "BENCH_MODE": "rate", "BENCH_RATE": "40",
           "BENCH_TOKEN": REF_TOKEN, "BENCH_SIZE": "16"}
    done = subprocess.run([sys.executable, "-m", "bench.generators.raw_client", "--url", ref_server.url],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    marks = {m["ev"]: m for m in (json.loads(line[8:]) for line in done.stdout.splitlines() if line.startswith("@@bench "))}
    assert marks["ready"]["connected"] == 5
    end = marks["end"]
    # 5 connections x 40/s over 1 s: an open loop offers 200 whatever the acks do
    assert 150 <= end["acks"] <= 250, end
    assert end["lat"]["ack"]["n"] == end["acks"] and not end["errors"], end


def _run(tool: str, rnd: int, cpu: float, **extra: object) -> dict[str, object]:
    return {"suite": "ack", "tool": tool, "round": rnd, "connections": 50, "processes": 1, "room_size": 1,
            "rate": None, "us_cpu_per_ack": cpu, **extra}


def test_ratios_pair_rounds_and_report_their_range() -> None:
    runs = [_run("roombench-lean", 0, 30.0), _run("python-raw", 0, 20.0),
            _run("roombench-lean", 1, 22.0), _run("python-raw", 1, 20.0),
            _run("roombench-lean", 2, 40.0)]  # round 2 has no yardstick: left out, not paired across rounds
    med, lo, hi = ratio_range(runs, "ack", "roombench-lean", "python-raw", "us_cpu_per_ack", connections=50)
    assert (lo, hi) == (1.1, 1.5) and abs(med - 1.3) < 1e-9
    t = cost_targets({"runs": runs})["cost.vs_raw@50"]
    assert t["range"] == [1.1, 1.5] and t["pass"] is False  # 1.3 > 1.15


def test_tool_at_ref_runs_from_a_checkout_of_that_commit(tmp_path: Path) -> None:
    from bench.generators.checkouts import checkouts
    from bench.generators.tools import Job, command

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with checkouts(["HEAD"]) as commits:
        assert commits == {"HEAD": head}
        argv, env, cwd = command(Job("roombench-lean@HEAD", "ack", 10), "http://127.0.0.1:1", "t", tmp_path / "c",
                                 tmp_path)
        assert cwd != REPO and (cwd / "bench" / "generators" / "locust_roombench.py").is_file()
        assert str(cwd / "bench" / "generators" / "locust_roombench.py") in argv
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(cwd)
        checked_out = subprocess.run(["git", "-C", str(cwd), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        assert checked_out == head
    assert not cwd.exists()  # removed with the run, and from git's list of worktrees
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(cwd) not in listed


def test_tool_at_ref_refuses_unknown_refs_and_non_python_tools() -> None:
    for tools, says in (("roombench-lean@no-such-ref-xyz", "is not a commit"),
                        ("node-client@HEAD", "runs a Python generator"),
                        ("roombench-lean,roombench-lean", "names a tool twice")):
        done = subprocess.run([sys.executable, "-m", "bench.generators.run", "--tools", tools, "--suites", "ack",
                               "--out", "/nonexistent"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and says in done.stderr, (tools, done.stderr)
        assert "Traceback" not in done.stderr


def test_profile_covers_the_equal_load_suite_for_python_generators_only() -> None:
    from bench.generators.run import parse_args, plan

    a = parse_args(["--suites", "equal", "--equal-rates", "5000,15000", "--tools", "roombench-lean,python-raw,node-client",
                    "--rounds", "1", "--profile"])
    profiled = [(suite, job.tool, job.mode, job.connections * job.rate) for suite, _, job in plan(a, 20_000)
                if suite.startswith("profile")]
    # one extra round at the first offered rate, apart from the measured ones; yardsticks are not profiled
    assert profiled == [("profile-equal", "roombench-lean", "rate", 5000)]


def test_pin_puts_every_thread_of_a_process_tree_on_one_cpu() -> None:
    import pytest

    from bench.generators.harness import pin_tree

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    cpu = max(os.sched_getaffinity(0))
    # a child with a second thread, and a grandchild: all of them end up on the one CPU
    code = ("import subprocess, sys, threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start();"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); print(g.pid, flush=True);"
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())  # type: ignore[union-attr]
        tids = [(pid, int(t)) for pid in (child.pid, grandchild) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(tids) >= 3
        pin_tree(child.pid, cpu)
        assert all(os.sched_getaffinity(tid) == {cpu} for _, tid in tids)
    finally:
        import psutil

        for p in psutil.Process(child.pid).children(recursive=True):
            p.kill()
        child.kill()
        child.wait()


def test_runs_short_of_connections_or_with_errors_are_named() -> None:
    from bench.generators.genreport import shortfalls

    runs = [
        {"tool": "roombench-lean", "suite": "ack", "connections": 1000, "connected": 623, "round": 0,
         "errors": {"connect_failed": 1903}},
        {"tool": "node-client", "suite": "ack", "connections": 1000, "connected": 1000, "round": 0, "errors": {}},
        {"tool": "python-raw", "suite": "ack", "connections": 50, "connected": 50, "round": 1, "errors": {"bad_ack": 2}},
        {"tool": "artillery", "suite": "ack", "connections": 50, "round": 0, "error": "did not start"},
    ]
    assert shortfalls(runs) == [
        "roombench-lean ack 1000 conns round 1: 623 of 1,000 connected, connect_failed 1,903",
        "python-raw ack 50 conns round 2: bad_ack 2",
    ]
