"""--chaos: kill / restart / pause the server roombench started, on a schedule, in real runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from roombench.bench.chaos import parse_chaos
from roombench.exceptions import UsageError

SMALL = ["--users", "6", "--spawn-rate", "50", "--room-size", "3", "--rate", "2", "--drain", "2"]


def roombench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("spec,horizon,expected", [
    ("kill-every=4s,down=1s", 10, [(4, "kill"), (5, "restart"), (8, "kill"), (9, "restart")]),
    ("kill-every=4", 8.5, [(4, "kill"), (5, "restart"), (8, "kill"), (9, "restart")]),  # undone past the end
    ("pause-every=5s,for=2s", 12, [(5, "pause"), (7, "resume"), (10, "pause"), (12, "resume")]),
    ("kill@8s, restart@11s", 20, [(8, "kill"), (11, "restart")]),
    ("pause@500ms,resume@1.5s,kill@2s", 5, [(0.5, "pause"), (1.5, "resume"), (2, "kill")]),
])
def test_specs_give_their_schedule(spec: str, horizon: float, expected: list[tuple[float, str]]) -> None:
    assert parse_chaos(spec).schedule(horizon) == expected


@pytest.mark.parametrize("spec,needle", [
    ("", "empty"),
    ("kill-every=4s,down=4s", "must be shorter"),
    ("kill-every=0s", "needs a time > 0"),
    ("kill-every=nan", "needs a time > 0"),
    ("kill-every=4x", "needs a time > 0"),
    ("explode@3s", "unknown action 'explode'"),
    ("kill-every=4s,pause-every=5s", "not both"),
    ("kill-every=4s,for=1s", "for goes with pause-every"),
    ("down=1s", "needs kill-every or pause-every"),
    ("restart@3s", "restart@3s while the server is up"),
    ("kill@3s,pause@4s", "pause@4s while the server is down"),
    ("kill-every=4s,kill@2s", "not both"),
    ("kill", "neither key=T nor action@T"),
    ("speed=3", "unknown key 'speed'"),
])
def test_bad_specs_are_one_usage_error(spec: str, needle: str) -> None:
    with pytest.raises(UsageError, match="bad chaos spec") as info:
        parse_chaos(spec)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args,needle", [
    (["--chaos", "kill-every=2s,down=5s"], "must be shorter"),
    (["--chaos", "kill-every=2s", "--host", "http://127.0.0.1:1"], "drop --host"),
    (["--server", "py", "--host", "http://127.0.0.1:1"], "give one of them"),
    (["--server", "nope"], "invalid choice"),
    (["--server", "ws"], "use --transport ws"),
    (["--server", "py", "--transport", "ws"], "use --transport lean or compat"),
])
def test_bad_chaos_and_server_options_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    res = roombench("run", "--out", str(tmp_path), *args, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and needle in res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line]) == 1


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_kill_every_against_py_redis_ends_on_time_and_records_every_action(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = roombench("run", "--server", "py-redis", "--chaos", "kill-every=4s,down=1s", *SMALL,
                    "--duration", "11", "--out", str(out))
    ended = time.time()
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((out / "summary.json").read_bytes())
    meta = s["metadata"]
    # from the load's start: 11 s of load + the drain (2 s, twice with reconnects) + the
    # reconciliation (5 s at most) + the server's stop: the kills stretch nothing
    took = ended - meta["started"]
    assert 11 < took < 11 + 2 * 2 + 5 + 3, took
    assert meta["server_variant"] == "py-redis" and meta["chaos_spec"] == "kill-every=4s,down=1s"
    actions = [a["action"] for a in meta["chaos"]]
    assert actions[:4] == ["kill", "restart", "kill", "restart"] and "error" not in str(meta["chaos"])
    ts = [a["t"] for a in meta["chaos"]]
    assert ts == sorted(ts) and -2 < ts[0] < 5 and 0.9 < ts[1] - ts[0] < 2
    assert meta["interrupted"] is False
    d = s["delivery"]
    assert d["sent"] > 0 and d["lost"] == 0  # redis kept the history: the restarted servers serve it
    assert s["errors"].get("disconnected", 0) > 0  # the kills were real
    assert "chaos: " in res.stdout


@pytest.mark.timeout(60)
def test_pause_and_resume_the_embedded_server(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = roombench("run", "--chaos", "pause@2s,resume@3s", *SMALL, "--duration", "4", "--ack-timeout", "5",
                    "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((out / "summary.json").read_bytes())
    assert [a["action"] for a in s["metadata"]["chaos"]] == ["pause", "resume"]
    # counted from the run's start, not the Locust child's launch (a slow start ate the
    # schedule: the pause came before any user sent and nothing was held)
    t = [a["t"] for a in s["metadata"]["chaos"]]
    assert 1.9 < t[0] < 2.6 and 2.9 < t[1] < 3.6, t
    assert s["latency_ms"]["ack"]["max"] > 500  # acks held while it was stopped count, at their true latency
