"""The py-redis variant: two uvicorn processes and a real redis-server on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests

from roombench.generator import Generator, run_for
from roombench.chat.scenario import Scenario
from roombench.exceptions import ServerError
from roombench.servers import ServerProcess, start_server

from tests.helpers import Peer, busy_port, wait_for

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="redis-server is not on PATH (Debian/Ubuntu: apt-get install -y redis-server)",
    ),
]

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with start_server("py-redis", token=TOKEN) as started:
        yield started


@pytest.fixture
def peers(peer_factory: Callable[..., Peer]) -> Callable[..., Peer]:
    """``peers(url, user_id)``: a peer on one process of the server."""
    return peer_factory


def backfill(url: str, room: str, query: str = "") -> list[dict[str, Any]]:
    response = requests.get(f"{url}/channels/{room}/messages?{query}", headers=AUTH, timeout=5)
    assert response.status_code == 200
    return response.json()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_and_stop_leave_nothing_behind() -> None:
    server = start_server("py-redis", token=TOKEN)
    assert len(server.urls) == 2 and server.url == ",".join(server.urls)
    assert len(set(server.pids)) == 3 and server.pids[0] == server.pid
    assert server.redis_url and server.redis_url.startswith("redis://127.0.0.1:")
    assert server.running
    for url in server.urls:
        assert requests.get(url + "/healthz", timeout=2).text == "ok"
    server.stop()
    server.stop()  # idempotent
    assert not server.running
    assert all(_gone(pid) for pid in server.pids)
    for url in server.urls:
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/healthz", timeout=2)


def _children() -> list[str]:
    """Command names of this process's live children (from /proc; zombies excluded)."""
    names = []
    for stat in os.listdir("/proc"):
        try:
            with open(f"/proc/{stat}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{stat}/comm") as f:
                comm = f.read().strip()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            names.append(comm)
    return names


def test_a_start_that_fails_midway_stops_redis_too() -> None:
    with busy_port() as port:
        with pytest.raises(ServerError, match="(?i)address already in use"):
            start_server("py-redis", port=port)
    assert "redis-server" not in _children()


def test_missing_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerError, match="apt-get install -y redis-server"):
        start_server("py-redis")


def test_fan_out_and_backfill_cross_processes(
    server: ServerProcess, peers: Callable[[str, str], Peer], room: str
) -> None:
    url_a, url_b = server.urls
    alice, bob = peers(url_a, "alice"), peers(url_b, "bob")
    assert alice.call("join", {"room": room}) == {"ok": True, "last_id": None}
    assert bob.call("join", {"room": room}) == {"ok": True, "last_id": None}
    ack = alice.call("send_message", {"channel_id": room, "content": "hi", "temp_id": "t-1"})
    assert ack == {"id": 1, "temp_id": "t-1"}
    wait_for(lambda: bob.ids() == [1] and alice.ids() == [1])  # live on B, echo on A
    message = bob.got["new_message"][0]
    assert (message["sender_id"], message["content"], message["temp_id"]) == ("alice", "hi", "t-1")
    assert backfill(url_b, room) == [message]  # stored once, readable from any process
    assert bob.call("join", {"room": room}) == {"ok": True, "last_id": 1}
    alice.client.emit("typing", {"channel": room})  # through AsyncRedisManager
    wait_for(lambda: bob.got["user_typing"] == [{"channel": room, "user_id": "alice"}])
    assert alice.got["user_typing"] == []


def test_ids_stay_in_order_with_senders_on_both_processes(
    server: ServerProcess, peers: Callable[[str, str], Peer], room: str
) -> None:
    url_a, url_b = server.urls
    members = [peers(url, f"u{i}") for i, url in enumerate([url_a, url_b, url_a, url_b])]
    for peer in members:
        peer.call("join", {"room": room})

    def burst(peer: Peer, n: int) -> None:
        for k in range(n):
            payload = {"channel_id": room, "content": "x", "temp_id": f"{id(peer)}-{k}"}
            peer.client.emit("send_message", payload)

    gevent.joinall([gevent.spawn(burst, members[0], 40), gevent.spawn(burst, members[1], 40)])
    wait_for(lambda: all(len(p.ids()) == 80 for p in members))
    for peer in members:  # every connection, on either process, in id order, nothing missing
        assert peer.ids() == list(range(1, 81))
    page = backfill(url_b, room, "after=10&limit=5")
    assert [m["id"] for m in page] == [11, 12, 13, 14, 15]
    assert backfill(url_a, room, "after=78&limit=100") == members[0].got["new_message"][78:]
    assert backfill(url_a, "no-such-room") == []


def test_rest_still_checks_the_token(server: ServerProcess) -> None:
    response = requests.get(server.urls[1] + "/channels/r/messages", timeout=5)
    assert response.status_code == 401


def test_generator_end_to_end_with_drops_recovers_everything(server: ServerProcess) -> None:
    scenario = Scenario(token=TOKEN, rate=10, room_size=4, drop_every=0.6,
                        reconnect_delay=0.1, reconnect_delay_max=0.5, drain=3)
    report = run_for(Generator(server.url, scenario), 4, 3.0)
    c = report["ledger"]
    assert c["sent"] > 0
    assert c["lost"] == 0 and c["duplicates"] == 0 and c["out_of_order"] == 0
    assert c["recovered"] > 0
    assert c["delivered_live"] + c["recovered"] == c["expected"]


@pytest.mark.parametrize("args", [["py-redis", "--port", "1"], ["py", "--redis", "redis://127.0.0.1:1/0"]])
def test_cli_redis_argument_is_checked(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "roombench.servers", *args],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "--redis" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
