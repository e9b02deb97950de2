"""The "node" server variant (roombench/servers/node/server.js) against the contract, on loopback.

Skipped only when ``node`` is not on PATH; a missing node_modules is a failure that says
``npm ci --prefix roombench/servers/node`` (CI installs it). The node-redis tests also need
``redis-server`` on PATH (start_server starts a private one) and are skipped without it.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from roombench.servers import variants as servers_variants
from roombench.exceptions import ServerError
from roombench.generator import Generator, run_for
from roombench.chat.scenario import Scenario
from roombench.servers import ServerProcess, start_server

from tests.helpers import Peer, check_a_wrong_token_is_refused, need_node, raw_socket, wait_for

pytestmark = pytest.mark.timeout(30)

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MESSAGE_FIELDS = {"id", "channel_id", "sender_id", "content", "temp_id", "ts"}
DROPPY = Scenario(token=TOKEN, rate=10, room_size=4, drop_every=0.6, reconnect_delay=0.1,
                  reconnect_delay_max=0.5, drain=3)


@pytest.fixture(scope="module")
def node_server() -> Iterator[ServerProcess]:
    """The node variant with token "secret", shared by this module's tests."""
    need_node()
    with start_server("node", token=TOKEN) as server:
        yield server


@pytest.fixture
def peers(node_server: ServerProcess, peer_factory: Callable[..., Peer]) -> Callable[..., Peer]:
    def make(user_id: str | None = None, url: str = node_server.url) -> Peer:
        return peer_factory(url, user_id)

    return make


def backfill(url: str, room: str, headers: dict[str, str] = AUTH, **params: Any) -> requests.Response:
    return requests.get(f"{url}/channels/{room}/messages", params=params, headers=headers, timeout=5)


def test_join_send_ack_and_fan_out_to_every_member(peers: Callable[..., Peer], room: str) -> None:
    alice, bob = peers("alice"), peers("bob")
    assert alice.call("join", {"room": room}) == {"ok": True, "last_id": None}
    assert bob.call("join", {"room": room}) == {"ok": True, "last_id": None}
    for n in (1, 2, 3):
        ack = alice.call("send_message", {"channel_id": room, "content": f"hi {n}", "temp_id": f"t-{n}"})
        assert ack == {"id": n, "temp_id": f"t-{n}"}
    for peer in (alice, bob):  # the sender's own echo included
        wait_for(lambda p=peer: len(p.got["new_message"]) == 3)
        first = peer.got["new_message"][0]
        assert set(first) == MESSAGE_FIELDS
        assert (first["id"], first["channel_id"], first["sender_id"]) == (1, room, "alice")
        assert (first["content"], first["temp_id"]) == ("hi 1", "t-1")
        assert abs(first["ts"] - time.time()) < 60
        assert [m["id"] for m in peer.got["new_message"]] == [1, 2, 3]
    assert peers("carol").call("join", {"room": room}) == {"ok": True, "last_id": 3}
    assert bob.call("leave", {"room": room}) == {"ok": True}
    alice.call("send_message", {"channel_id": room, "content": "gone", "temp_id": "t-4"})
    wait_for(lambda: len(alice.got["new_message"]) == 4)
    time.sleep(0.1)
    assert len(bob.got["new_message"]) == 3  # left the room: no more fan-out


def test_typing_goes_to_others_and_read_receipts_to_all(peers: Callable[..., Peer], room: str) -> None:
    alice, bob = peers("alice"), peers()
    for peer in (alice, bob):
        peer.call("join", {"room": room})
    assert alice.call("typing", {"channel": room}) is None  # acked with no arguments
    alice.call("mark_read", {"channel_id": room, "message_id": 7})
    wait_for(lambda: len(bob.got["message_read"]) == 1 and len(alice.got["message_read"]) == 1)
    assert bob.got["user_typing"] == [{"channel": room, "user_id": "alice"}]
    assert alice.got["user_typing"] == []
    assert bob.got["message_read"] == [{"channel_id": room, "message_id": 7, "user_id": "alice"}]
    bob.call("typing", {"channel": room})
    wait_for(lambda: len(alice.got["user_typing"]) == 1)
    assert alice.got["user_typing"][0]["user_id"] == bob.client.get_sid()  # no user_id: the sid


def test_bad_payloads_get_an_error_ack_and_do_nothing(peers: Callable[..., Peer], room: str) -> None:
    alice = peers("alice")
    alice.call("join", {"room": room})
    for event, payload in [("join", {"room": 1}), ("leave", "x"), ("typing", {}),
                           ("send_message", {"channel_id": room, "content": "no temp id"}),
                           ("mark_read", {"channel_id": room, "message_id": True}),
                           ("mark_read", {"channel_id": room, "message_id": "1"})]:
        assert set(alice.call(event, payload)) == {"error"}, (event, payload)
    assert set(alice.call("send_message", None)) == {"error"}
    time.sleep(0.1)
    assert alice.got["new_message"] == [] and alice.got["message_read"] == []


def test_rest_backfill_pages_and_refuses(node_server: ServerProcess, peers: Callable[..., Peer]) -> None:
    room = f"a/b {uuid.uuid4().hex[:6]}"  # a slash and a space: percent-encoded in the path
    alice = peers("alice")
    for n in range(1, 6):
        alice.call("send_message", {"channel_id": room, "content": f"m{n}", "temp_id": f"t{n}"})
    segment = requests.utils.quote(room, safe="")
    url = node_server.url
    page = backfill(url, segment, after=1, limit=2)
    assert page.status_code == 200
    assert [(m["id"], m["content"], m["channel_id"]) for m in page.json()] == [(2, "m2", room), (3, "m3", room)]
    assert set(page.json()[0]) == MESSAGE_FIELDS
    assert [m["id"] for m in backfill(url, segment).json()] == [1, 2, 3, 4, 5]
    assert backfill(url, segment, after=5).json() == []
    assert backfill(url, "never-used").json() == []
    assert backfill(url, segment, headers={}).status_code == 401
    assert backfill(url, segment, headers={"Authorization": "Bearer nope"}).status_code == 401
    for params in ({"after": "x"}, {"after": -1}, {"limit": 0}):
        response = backfill(url, segment, **params)
        assert response.status_code == 400 and "error" in response.json()
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404
    post = requests.post(f"{url}/channels/x/messages", headers=AUTH, timeout=5)
    assert (post.status_code, post.headers["allow"]) == (405, "GET")
    health = requests.get(f"{url}/healthz", timeout=5)
    assert (health.status_code, health.text) == (200, "ok")
    assert requests.get(f"{url}/socket.io/?EIO=4&transport=polling", timeout=5).status_code == 400


def test_wrong_token_is_refused_with_a_connect_error(node_server: ServerProcess) -> None:
    check_a_wrong_token_is_refused(node_server.url, lambda: _raw_socket(node_server))


def test_raw_frames_match_the_protocol_doc(node_server: ServerProcess, room: str) -> None:
    ws = _raw_socket(node_server)
    try:
        ws.send("40" + json.dumps({"token": TOKEN, "user_id": "alice"}))
        assert ws.recv().startswith('40{"sid":')
        ws.send(f'420["join",{{"room":"{room}"}}]')
        assert ws.recv() == '430[{"ok":true,"last_id":null}]'
        ws.send(f'421["send_message",{{"channel_id":"{room}","content":"hi","temp_id":"t-1"}}]')
        frames = [ws.recv(), ws.recv()]  # the echo and the ack, in either order
        assert '431[{"id":1,"temp_id":"t-1"}]' in frames
        echo = json.loads(next(f for f in frames if f.startswith("42["))[2:])
        assert echo[0] == "new_message" and list(echo[1]) == [
            "id", "channel_id", "sender_id", "content", "temp_id", "ts"]
        ws.send(f'422["typing",{{"channel":"{room}"}}]')
        assert ws.recv() == "432[]"
    finally:
        ws.close()


def _raw_socket(server: ServerProcess) -> websocket.WebSocket:
    ws = raw_socket(server.url)
    opened = ws.recv()
    assert opened.startswith("0")  # Engine.IO open, with the reference server's settings
    settings = json.loads(opened[1:])
    assert (settings["upgrades"], settings["pingInterval"], settings["pingTimeout"]) == ([], 25000, 20000)
    assert settings["maxPayload"] == 1000000
    return ws


@pytest.mark.parametrize("transport", ["lean", "compat"])
def test_generator_backfills_forced_drops(node_server: ServerProcess, transport: str) -> None:
    scenario = replace(DROPPY, transport=transport)
    report = run_for(Generator(node_server.url, scenario), 4, 3.0)
    c = report["ledger"]
    assert report["counters"]["forced_drops"] >= 4
    assert c["sent"] > 50  # not every ack: a send right before a forced drop loses its ack
    assert c["lost"] == 0
    assert c["recovered"] > 0
    assert c["delivered_live"] + c["recovered"] == c["expected"]
    assert (c["duplicates"], c["out_of_order"], c["unexpected"]) == (0, 0, 0)


def test_faults_are_forwarded(server_factory: Any) -> None:
    need_node()
    server = server_factory("node", token=TOKEN, faults={"drop_live_every": 2, "backfill_empty": True})
    scenario = replace(DROPPY, drop_every=0.0, room_size=3)
    c = run_for(Generator(server.url, scenario), 3, 1.5)["ledger"]
    missed = (c["acked"] // 2) * 2  # every 2nd id, two other members each
    assert c["live_missed"] == missed > 0
    assert c["recovered"] == 0 and c["lost"] == missed


def test_sigterm_exits_cleanly_and_fast() -> None:
    need_node()
    server = start_server("node")
    peer = Peer(server.url, token="")  # no token configured: any auth is accepted
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    assert server._proc.returncode == 0
    peer.client.disconnect()


def test_missing_node_modules_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    need_node()
    monkeypatch.setattr(servers_variants, "NODE_DIR", tmp_path)
    with pytest.raises(ServerError, match=r"npm ci --prefix roombench/servers/node"):
        start_server("node")


@pytest.fixture
def node_redis(server_factory: Any) -> ServerProcess:
    """The node-redis variant: two node processes and a private redis-server."""
    need_node()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the node-redis variant cannot run")
    return server_factory("node-redis", token=TOKEN)


def test_node_redis_spans_processes(node_redis: ServerProcess, room: str) -> None:
    one, two = node_redis.urls
    alice, bob = Peer(one, "alice"), Peer(two, "bob")
    try:
        for peer in (alice, bob):
            assert peer.call("join", {"room": room}) == {"ok": True, "last_id": None}
        acks = [alice.call("send_message", {"channel_id": room, "content": "a", "temp_id": "a1"}),
                bob.call("send_message", {"channel_id": room, "content": "b", "temp_id": "b1"})]
        assert acks == [{"id": 1, "temp_id": "a1"}, {"id": 2, "temp_id": "b1"}]  # one counter
        wait_for(lambda: len(alice.got["new_message"]) == 2 and len(bob.got["new_message"]) == 2)
        assert [m["temp_id"] for m in bob.got["new_message"]] == ["a1", "b1"]
        stored = backfill(two, room).json()
        assert stored == alice.got["new_message"]  # the same JSON from Redis as live
        assert set(stored[0]) == MESSAGE_FIELDS
        bob.call("typing", {"channel": room})
        bob.call("mark_read", {"channel_id": room, "message_id": 2})
        wait_for(lambda: len(alice.got["message_read"]) == 1)
        assert alice.got["user_typing"] == [{"channel": room, "user_id": "bob"}]
        assert backfill(one, room, after=1, limit=5).json() == stored[1:]
        carol = Peer(one, "carol")
        assert carol.call("join", {"room": room})["last_id"] == 2
        carol.client.disconnect()
    finally:
        alice.client.disconnect()
        bob.client.disconnect()


def test_generator_against_node_redis(node_redis: ServerProcess) -> None:
    report = run_for(Generator(node_redis.url, DROPPY), 4, 2.0)
    c = report["ledger"]
    assert report["counters"]["forced_drops"] >= 2
    assert c["sent"] > 30
    assert c["lost"] == 0
    assert c["delivered_live"] + c["recovered"] == c["expected"]
    assert (c["duplicates"], c["out_of_order"], c["unexpected"]) == (0, 0, 0)
