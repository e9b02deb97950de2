"""`roombench run` end to end: a real Locust child against the real reference server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from roombench.measure.metrics import METRICS
from roombench.servers import free_port
from roombench.measure.summary import SCHEMA, STATS

from tests.helpers import REF_TOKEN

SMALL = ["--users", "6", "--spawn-rate", "50", "--duration", "3", "--room-size", "3", "--rate", "5",
         "--typing-every", "2", "--read-every", "2", "--drain", "3"]


def roombench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(90)
def test_run_writes_a_valid_summary_and_honours_slos(tmp_path: Path) -> None:
    out = tmp_path / "ok"
    res = roombench("run", *SMALL, "--out", str(out), "--slo", "lost==0", "--slo", "ack.p99<5000")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SLO lost==0: PASS" in res.stdout
    s = orjson.loads((out / "summary.json").read_bytes())
    assert s["schema"] == SCHEMA
    meta = s["metadata"]
    for key in ("started", "duration_s", "target", "scenario", "versions", "git_revision", "run_id"):
        assert key in meta
    assert meta["scenario"]["room_size"] == 3 and meta["scenario"]["token"] == "***"
    # the load lasts what was asked, from the run's start: Locust's -t, counting from before
    # the generator started, left 0.3-2.6 s of a 3 s run on a loaded machine
    assert 2.9 < meta["duration_s"] < 3.8, meta["duration_s"]
    assert 0 < meta["generator"]["cpu_pct"] < 200
    assert set(s["latency_ms"]) == set(METRICS)
    for name in ("ack", "fanout", "connect", "typing", "read_receipt"):
        assert s["latency_ms"][name]["count"] > 0, name
        assert set(s["latency_ms"][name]) == set(STATS)
    d = s["delivery"]
    assert d["sent"] == d["acked"] > 0
    assert d["expected"] == d["delivered_live"] + d["recovered"] and d["lost"] == 0
    assert s["latency_ms"]["ack"]["count"] == d["acked"]
    assert s["latency_ms"]["fanout"]["count"] == d["delivered_live"]
    assert [v["ok"] for v in s["slo"]] == [True, True]
    assert (out / "locust_stats.csv").exists()
    assert "ack,send_message" in (out / "locust_stats.csv").read_text().replace('"', "")


@pytest.mark.timeout(90)
def test_failing_slo_sets_exit_code_1(tmp_path: Path) -> None:
    res = roombench("run", *SMALL, "--out", str(tmp_path), "--slo", "ack.p50<0.0001", "--slo", "lost==0")
    assert res.returncode == 1, res.stdout + res.stderr
    s = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert [v["ok"] for v in s["slo"]] == [False, True]
    assert "SLO ack.p50<0.0001: FAIL" in res.stdout


def _one_line_exit_2(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert needle in res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line]) == 1


@pytest.mark.parametrize("args,needle", [
    (["--slo", "ack.p99<<5"], "bad --slo"),
    (["--slo", "nonsense.p99<5"], "unknown metric"),
    (["--rate", "0"], "--rate must be > 0"),
    (["--room-sizes", "3"], "unrecognized arguments"),
    (["--host", "htp://x"], "bad server URL"),
    (["--transport", "carrier-pigeon"], "invalid choice"),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    _one_line_exit_2(roombench("run", "--out", str(tmp_path), *args, timeout=30), needle)


def test_refused_connection_is_one_line(tmp_path: Path) -> None:
    res = roombench("run", "--host", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path), timeout=30)
    _one_line_exit_2(res, "cannot reach")


def test_wrong_token_is_one_line(tmp_path: Path, ref_server: Any) -> None:
    res = roombench("run", "--host", ref_server.url, "--token", "wrong", "--out", str(tmp_path), timeout=30)
    _one_line_exit_2(res, "refused")
    assert REF_TOKEN not in res.stderr


@pytest.mark.timeout(120)
def test_processes_merge_into_one_summary(tmp_path: Path) -> None:
    res = roombench("run", *SMALL, "--processes", "2", "--out", str(tmp_path), "--slo", "lost==0", timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert s["metadata"]["generator"]["processes"] == 2
    assert s["metadata"]["users"] == 6
    d = s["delivery"]
    assert d["sent"] == d["acked"] > 0 and d["expected"] == d["delivered_live"] + d["recovered"]
    assert s["latency_ms"]["ack"]["count"] == d["acked"]


def test_the_token_reaches_locust_by_environment_never_its_command_line(tmp_path: Path, ref_server: Any) -> None:
    from roombench.bench.run import RunOptions, child_env, locust_command
    from roombench.chat.scenario import TOKEN_ENV, Scenario

    secret = "tok-" + "s3cr3t" * 4
    scenario = Scenario(token=secret)
    opts = RunOptions(host=ref_server.url, scenario=scenario)
    assert not any(secret in arg for arg in locust_command(opts, ref_server.url, tmp_path, scenario))
    assert child_env(scenario)[TOKEN_ENV] == secret
    # and the child really authenticates with it: the reference server refuses a wrong token
    # 5 s at 10 msg/s each: on a loaded machine Locust's start and the connects ate a 2 s run
    # whole (twice in fresh-clone CI runs: no send yet, or the connects cut off by the stop)
    res = roombench("run", "--host", ref_server.url, "--token", REF_TOKEN, "--users", "2", "--duration", "5",
                    "--rate", "10", "--out", str(tmp_path / "run"), "--slo", "ack.count>0", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    written = b"".join(p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert REF_TOKEN.encode() not in written


@pytest.mark.timeout(60)
def test_on_tick_is_called_about_once_a_second_while_locust_runs(tmp_path: Path) -> None:
    from roombench.bench.run import RunOptions, run
    from roombench.chat.scenario import Scenario

    ticks: list[float] = []
    opts = RunOptions(users=2, duration=3, out=tmp_path, quiet=True, scenario=Scenario(room_size=2, drain=1),
                      on_tick=lambda: ticks.append(time.monotonic()))
    assert run(opts) == 0
    assert len(ticks) >= 3
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(0.9 < g < 1.5 for g in gaps), gaps


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_impair_puts_a_proxy_before_each_url_of_a_server_spread_over_processes(tmp_path: Path) -> None:
    # py-redis: two server processes, users spread over both; each URL gets its proxy
    out = tmp_path / "run"
    res = roombench("run", "--server", "py-redis", *SMALL, "--impair", "latency=40ms", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((out / "summary.json").read_bytes())
    imp = s["metadata"]["impair"]
    targets = imp["target"].split(",")
    assert len(targets) == 2 and [p["target"] for p in imp["proxies"]] == targets
    assert all(p["connections"] >= 3 for p in imp["proxies"]), imp  # 6 users over 2 URLs, and backfills
    assert imp["proxy"]["connections"] == sum(p["connections"] for p in imp["proxies"])
    assert s["latency_ms"]["ack"]["p50"] > 80  # 40 ms each way, for the users on either URL
    assert s["delivery"]["lost"] == 0 and s["delivery"]["sent"] > 0
