"""Issue 10 point 4: a server restarted mid-run (ids start again) is re-based, not misreported.

Real servers on loopback, restarted on the same port while the generator runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import gevent
import pytest

from roombench.chat.backfill import BackfillClient
from roombench.chat.scenario import Scenario
from roombench.generator import Generator, run_report
from roombench.measure.report import ProcessReport
from roombench.servers import ServerProcess, start_server
from roombench.servers.process import free_port
from roombench.servers.variants import SERVER_TOKEN_ENV
from roombench.wire.profile import DEFAULT_PROFILE, Profile

from tests.helpers import REF_TOKEN, wait_until

pytestmark = pytest.mark.timeout(60)

# no typing / read receipts: they have nothing to do with ids; fast reconnects
RESTART = Scenario(token=REF_TOKEN, rate=10.0, room_size=4, typing_every=0, read_every=0,
                   reconnect_delay=0.1, reconnect_delay_max=0.3, drain=3.0, ack_timeout=2.0)


def _run_around(url: str, restart: Any, users: int = 4, duration: float = 4.0, at: float = 1.5,
                profile: Profile = DEFAULT_PROFILE, gen_box: list[Generator] | None = None,
                scenario: Scenario = RESTART) -> tuple[Generator, ProcessReport]:
    """Run the generator ``duration`` s against ``url``, calling ``restart()`` at ``at`` s
    (``gen_box`` gets the generator first, for a restart that watches it)."""
    gen = Generator(url, scenario, profile)
    if gen_box is not None:
        gen_box.append(gen)
    run = gevent.spawn(run_report, gen, users, duration)
    gevent.sleep(at)
    restart()
    return gen, run.get(timeout=duration + 30)


def _held(url: str, gen: Generator) -> set[str]:
    """Every temp_id the (restarted) server holds in the run's rooms."""
    rest = BackfillClient(url, DEFAULT_PROFILE, REF_TOKEN)
    rooms = {room for no in gen.sessions for room in gen.rooms_for(no)}
    try:
        return {m["temp_id"] for room in rooms for m in rest.after(room, 0, time.monotonic() + 5)}
    finally:
        rest.close()


@pytest.mark.parametrize("join_ack", [True, False])
def test_py_restarted_on_its_port_loses_only_what_it_lost(join_ack: bool) -> None:
    # the first server drops every 4th live delivery: those (sent before the restart, never
    # backfilled during the run) are really gone with it; what the restarted server holds is not.
    # Without join acks the first live id after the reconnect tells of the restart.
    port = free_port()
    servers: list[ServerProcess] = [start_server("py", port=port, token=REF_TOKEN, faults={"drop_live_every": 4})]

    gen_box: list[Generator] = []

    def restart() -> None:
        servers[0].stop()
        gevent.sleep(0.5)
        servers.append(start_server("py", port=port, token=REF_TOKEN))
        # Whether a member misses messages on the restarted server depends on how far apart
        # the members' reconnects land (on a loaded machine they came all at once, and
        # nothing was recovered). So one member is dropped, once every member is back, for
        # 0.6 s of its room's sends: those it must fetch from the restarted server.
        sessions = gen_box[0].sessions
        wait_until(lambda: len(sessions) == 4 and all(s.whole for s in sessions.values()), timeout=5.0)
        gevent.sleep(0.2)
        sessions[0].drop()

    try:
        # 7 s: the restart (stop, 0.5 s, a new process ready) takes 1-3 s on a loaded machine,
        # and the restarted server must get messages before the run ends
        gen, report = _run_around(servers[0].url, restart, duration=7.0, gen_box=gen_box,
                                  profile=replace(DEFAULT_PROFILE, join_ack=join_ack),
                                  scenario=replace(RESTART, drop_for=0.6))
        held = _held(servers[-1].url, gen)
    finally:
        for server in servers:
            server.stop()
    c = report.ledger
    assert len(servers) == 2 and held  # the restarted server got messages
    assert report.counters["server_resets"] == 1  # once for the restart, not per user or room
    assert report.counters["forced_drops"] == 1
    assert c.out_of_order == 0  # ids starting again are no disorder
    lost = gen.ledger.unreceived()
    assert len(lost) == c.lost > 0  # the first server's dropped deliveries
    assert not {temp_id for _, temp_id in lost} & held  # nothing the restarted server has
    assert c.recovered > 0 and c.delivered_live + c.recovered + c.lost == c.expected


def test_restart_counts_once_per_outage_in_the_ledger() -> None:
    from roombench.chat.ledger import Ledger

    ledger = Ledger("p-")
    ledger.on_sent("p-1", "r", 0, frozenset({0, 1}), 0.0)
    ledger.on_acked("p-1", 7)
    ledger.on_sent("p-2", "r", 0, frozenset({0, 1}), 0.0)
    assert ledger.missing() == {(1, "r"): 0}
    ledger.on_acked("p-2", 8)
    assert ledger.server_reset("r", dropped_at=10.0, t=11.0)  # first member after the restart
    assert not ledger.server_reset("r", dropped_at=10.1, t=11.2)  # another member, same outage
    assert not ledger.server_reset("s", dropped_at=10.0, t=11.3)  # another room, same outage
    ledger.on_sent("p-3", "r", 0, frozenset({0, 1}), 12.0)
    assert ledger.missing() == {(1, "r"): 0}  # re-based: covering fetches start from the new server's start
    assert ledger.server_reset("r", dropped_at=12.0, t=13.0)  # a drop after that: a new restart


def _respawn(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, **{SERVER_TOKEN_ENV: REF_TOKEN})
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_py_redis_restarted_with_redis_up_loses_nothing() -> None:
    import requests

    server = start_server("py-redis", token=REF_TOKEN)
    respawned: list[subprocess.Popen] = []
    gen_box: list[Generator] = []

    def restart() -> None:
        # both uvicorn processes die; redis, with every message, stays. The first comes back
        # a second before the second: its users rejoin and send while the second's are still
        # refused, so those miss messages live that only the backfill can bring them
        for pid in server.pids[:2]:
            os.kill(pid, signal.SIGKILL)
        gevent.sleep(0.3)
        for n, url in enumerate(server.urls):
            if n:  # the first's users send 10 messages the second's miss (a loaded machine: not a fixed sleep)
                sent = gen_box[0].ledger.counts().sent
                assert wait_until(lambda: gen_box[0].ledger.counts().sent >= sent + 10, timeout=10)
            port = url.rsplit(":", 1)[1]
            respawned.append(_respawn([sys.executable, "-m", "roombench.servers", "py-redis", "--host", "127.0.0.1",
                                       "--port", port, "--redis", server.redis_url or ""]))
            assert wait_until(lambda: _healthy(requests, url), timeout=10)

    try:
        gen, report = _run_around(server.url, restart, duration=8.0, gen_box=gen_box)
    finally:
        for proc in respawned:
            proc.send_signal(signal.SIGTERM)
        for proc in respawned:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop()
    c = report.ledger
    assert report.errors["disconnected"] >= 4  # every user lost its connection
    assert report.counters["server_resets"] == 0  # the ids went on: no reset
    assert (c.lost, c.out_of_order, c.duplicates) == (0, 0, 0)
    assert c.delivered_live + c.recovered == c.expected and c.recovered > 0


def _healthy(requests: Any, url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_summary_shows_server_resets(ref_server: Any) -> None:
    from roombench.measure.summary import build_summary, format_table

    report = run_report(Generator(ref_server.url, replace(RESTART, room_size=2)), 2, 0.5)
    report.counters["server_resets"] = 2
    twice = ProcessReport.merge([report, report])
    summary = build_summary(twice, target=ref_server.url, scenario={})
    assert summary["delivery"]["server_resets"] == 2  # seen by both processes: still 2 restarts
    assert "server resets: 2" in format_table(summary)
