"""The Locust web UI path: `locust -f locustfiles/chat.py` with a real server on loopback."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from roombench.servers import free_port

from tests.helpers import REF_TOKEN

LOCUSTFILE = Path(__file__).parents[2] / "locustfiles" / "chat.py"


@pytest.fixture
def web_ui(ref_server: Any, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "locust.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", ref_server.url,
                             "--web-host", "127.0.0.1", "--web-port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.timeout(60)
def test_web_ui_shows_the_scenario_and_stats(web_ui: str) -> None:
    page = requests.get(web_ui + "/", timeout=5).text
    for option in ("room_size", "drop_every", "transport", "server_profile"):
        assert option in page, option
    form = {"user_count": "4", "spawn_rate": "20", "room_size": "2", "rate": "5", "token": REF_TOKEN,
            "typing_every": "2", "read_every": "2"}
    assert requests.post(web_ui + "/swarm", data=form, timeout=5).json()["success"]
    deadline = time.monotonic() + 20
    names: set[tuple[str, str]] = set()
    while time.monotonic() < deadline and not {("ack", "send_message"), ("fanout", "new_message")} <= names:
        time.sleep(1)
        stats = requests.get(web_ui + "/stats/requests", timeout=5).json()["stats"]
        names = {(s["method"], s["name"]) for s in stats if s["num_requests"]}
    assert {("ack", "send_message"), ("fanout", "new_message"), ("connect", "socket.io")} <= names
    requests.post(web_ui + "/stop", timeout=30)  # POST: Locust 2.47's /stop refuses GET


def headless(host: str, tmp_path: Path, *extra: str, token: str | None = REF_TOKEN,
             run_time: str = "2s") -> tuple[int, dict[str, Any]]:
    """A short headless run; its exit code and Locust's CSVs by name (requests: rows by (Type, Name))."""
    env = {k: v for k, v in os.environ.items() if k != "ROOMBENCH_TOKEN"}
    if token is not None:
        env["ROOMBENCH_TOKEN"] = token
    with open(tmp_path / "locust.log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
                               "-u", "4", "-r", "50", "-t", run_time, "--room-size", "2", "--rate", "5", "--drain", "1",
                               "--csv", str(tmp_path / "locust"), "--summary-out", str(tmp_path / "summary.json"),
                               *extra], stdout=log, stderr=subprocess.STDOUT, env=env, timeout=60)
    with open(tmp_path / "locust_stats.csv") as f:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    with open(tmp_path / "locust_failures.csv") as f:
        failures = list(csv.DictReader(f))
    return proc.returncode, {"stats": stats, "failures": failures}


@pytest.mark.timeout(60)
def test_lost_messages_are_failures_in_locusts_table(server_factory: Any, tmp_path: Path) -> None:
    # every 2nd message is not fanned out live and the backfill answers nothing: lost
    server = server_factory("py", token=REF_TOKEN, faults={"drop_live_every": 2, "backfill_empty": True})
    # 4 s: Locust's -t counts its own start-up, which took the whole of 2 s on a loaded machine
    code, out = headless(server.url, tmp_path, "--exit-code-on-error", "3", run_time="4s")
    import orjson

    delivery = orjson.loads((tmp_path / "summary.json").read_bytes())["delivery"]
    lost = delivery["lost"]
    assert delivery["sent"] > 0 and lost > 0, delivery
    assert code == 3  # --exit-code-on-error sees them
    fanout = out["stats"][("fanout", "new_message")]
    assert int(fanout["Failure Count"]) == lost
    assert [(f["Method"], f["Name"], int(f["Occurrences"])) for f in out["failures"] if "lost" in f["Error"]] == [
        ("fanout", "new_message", lost)]
    # the Aggregated row: acks, plus the failed attempts of every row; no deliveries, no reconnects
    ack, total = out["stats"][("ack", "send_message")], out["stats"][("", "Aggregated")]
    failed_elsewhere = sum(int(r["Failure Count"]) for k, r in out["stats"].items() if k not in (("", "Aggregated"),
                                                                                                ("ack", "send_message")))
    assert int(total["Request Count"]) == int(ack["Request Count"]) + failed_elsewhere
    assert (tmp_path / "locust_roombench.csv").read_text().count(f"delivery,lost,{lost}") == 1


@pytest.mark.timeout(60)
def test_a_missing_token_shows_as_connect_failures(ref_server: Any, tmp_path: Path) -> None:
    code, out = headless(ref_server.url, tmp_path, token=None)
    connect = out["stats"][("connect", "socket.io")]
    assert int(connect["Failure Count"]) >= 4  # every user's connect was refused
    assert code == 1 and any(f["Method"] == "connect" for f in out["failures"])


def test_the_locustfile_lists_its_options() -> None:
    # Locust prints --help before loading a locustfile; the locustfile itself lists roombench's
    out = subprocess.run([sys.executable, str(LOCUSTFILE), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for option in ("--room-size", "--drop-every", "--server-profile", "--summary-out"):
        assert option in out.stdout
    assert "+-50% jitter" in out.stdout and "%%" not in out.stdout


@pytest.mark.timeout(60)
def test_reset_measurements_measures_from_here_and_keeps_the_ledger(ref_server: Any) -> None:
    """Generator.reset_measurements, what Locust's Reset button calls in a generator process:
    histograms, errors, wall time and start restart; the ledger and counters go on (Locust's
    side counts them from the reset, since the interval log takes deltas of them)."""
    import gevent

    from roombench.chat.scenario import Scenario
    from roombench.generator import Generator

    gen = Generator(ref_server.url, Scenario(token=REF_TOKEN, rate=20.0, room_size=2, drain=1.0))
    sessions = [gen.new_session() for _ in range(2)]
    greenlets = [gevent.spawn(s.run) for s in sessions]
    try:
        deadline = time.monotonic() + 20
        while gen.metrics.histogram("ack").total_count < 10:
            assert time.monotonic() < deadline, "no acks"
            gevent.sleep(0.1)
        gen.error("made_up", "an error before the reset")
        gevent.sleep(0.3)
        before = gen.report()
        started = gen.started
        gen.reset_measurements()
        after = gen.report()
    finally:
        gen.finish()
        gevent.killall(greenlets, timeout=5)
    assert before.metrics.histogram("ack").total_count >= 10 and before.errors["made_up"] == 1
    assert after.metrics.histogram("ack").total_count < before.metrics.histogram("ack").total_count
    assert not after.errors and after.wall_s < before.wall_s and gen.started > started
    assert after.ledger.sent >= before.ledger.sent > 0  # not cleared: counted from the reset by Locust's side


#: a Locust LocalRunner in a child process: N ChatUsers; how many user greenlets run, what stop leaves
_STAND_IN_PROBE = """
from gevent import monkey; monkey.patch_all()
import gc, json, sys, time
import gevent, greenlet
from locust.argument_parser import parse_options
from locust.env import Environment
import roombench.locust.users as users
from roombench.locust.state import RunState

host, n = sys.argv[1], int(sys.argv[2])
opts = parse_options(["-f", "x", "--host", host, "--room-size", "5", "--rate", "2"])
env = Environment(user_classes=[users.ChatUser], host=host, parsed_options=opts, events=users.events)
runner = env.create_local_runner()
runner.start(n, spawn_rate=1000)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    sessions = list(RunState.gen.sessions.values()) if RunState.gen else []
    if len(sessions) == n and all(s.joined.is_set() for s in sessions):
        break
    gevent.sleep(0.1)
gevent.sleep(1)
started = sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and o.args
              and isinstance(o.args[0], users.ChatUser) and bool(o))  # bool(greenlet): started and not dead
out = {"users": runner.user_count, "joined": sum(s.joined.is_set() for s in sessions),
       "user_greenlets_running": started, "sent": RunState.gen.ledger.counts().sent}
runner.stop()
gevent.sleep(0.5)
out["after_stop_users"] = runner.user_count
out["closed"] = sum(1 for s in sessions if s._closed)
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sender,running", [("clock", 0), ("greenlet", 10)])
def test_users_in_the_one_loop_hold_no_greenlet_and_stop_cleanly(ref_server: Any, sender: str, running: int) -> None:
    # a parked greenlet per user was ~8-10 KB of RSS; Locust still counts and stops every user
    env = dict(os.environ, ROOMBENCH_TOKEN=REF_TOKEN, ROOMBENCH_SENDER=sender)
    res = subprocess.run([sys.executable, "-c", _STAND_IN_PROBE, ref_server.url, "10"], capture_output=True,
                         text=True, env=env, timeout=50)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["users"] == 10 and out["joined"] == 10 and out["sent"] > 0, out
    assert out["user_greenlets_running"] == running, out
    assert out["after_stop_users"] == 0 and out["closed"] == 10, out
