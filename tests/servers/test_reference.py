"""The reference server and its process management, against real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import requests
import socketio
import websocket

from roombench.exceptions import ServerError, UsageError
from roombench.servers import VARIANTS, ServerProcess, free_port, start_server

from tests.helpers import Peer, busy_port, check_a_wrong_token_is_refused, raw_socket, wait_for

pytestmark = pytest.mark.timeout(30)

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def peers(ref_server: ServerProcess, peer_factory: Callable[..., Peer]) -> Callable[..., Peer]:
    def make(user_id: str | None = None, server: ServerProcess = ref_server) -> Peer:
        return peer_factory(server.url, user_id)

    return make


def send(peer: Peer, room: str, n: int, prefix: str = "t") -> list[dict[str, Any]]:
    payloads = [
        {"channel_id": room, "content": f"m{i}", "temp_id": f"{prefix}{i}"} for i in range(1, n + 1)
    ]
    return [peer.call("send_message", payload) for payload in payloads]


def backfill(server: ServerProcess, room: str, query: str = "", **kw: Any) -> requests.Response:
    kw.setdefault("headers", AUTH)
    return requests.get(f"{server.url}/channels/{room}/messages{query}", timeout=5, **kw)


def test_start_server_answers_healthz(ref_server: ServerProcess) -> None:
    assert ref_server.running and ref_server.variant == "py"
    assert ref_server.url == f"http://127.0.0.1:{ref_server.port}"
    response = requests.get(ref_server.url + "/healthz", timeout=5)
    assert (response.status_code, response.text) == (200, "ok")


def test_join_send_ack_and_fan_out(peers: Callable[..., Peer], room: str) -> None:
    alice, bob = peers("alice"), peers("bob")
    assert alice.call("join", {"room": room}) == {"ok": True, "last_id": None}
    assert bob.call("join", {"room": room}) == {"ok": True, "last_id": None}
    assert send(alice, room, 2) == [{"id": 1, "temp_id": "t1"}, {"id": 2, "temp_id": "t2"}]
    wait_for(lambda: len(bob.got["new_message"]) == 2 and len(alice.got["new_message"]) == 2)
    first = bob.got["new_message"][0]
    assert {k: first[k] for k in ("id", "channel_id", "sender_id", "content", "temp_id")} == {
        "id": 1, "channel_id": room, "sender_id": "alice", "content": "m1", "temp_id": "t1"}
    assert isinstance(first["ts"], float) and abs(first["ts"] - time.time()) < 60
    assert alice.got["new_message"] == bob.got["new_message"]
    assert peers("carol").call("join", {"room": room}) == {"ok": True, "last_id": 2}


def test_ids_are_per_channel_and_sender_need_not_be_member(
    peers: Callable[..., Peer], room: str
) -> None:
    member, outsider = peers("member"), peers()
    member.call("join", {"room": room})
    assert send(outsider, room, 1)[0]["id"] == 1
    assert send(outsider, room + "-other", 1)[0]["id"] == 1
    wait_for(lambda: member.ids() == [1])
    assert member.got["new_message"][0]["sender_id"] == outsider.client.get_sid()
    assert outsider.got["new_message"] == []


def test_invalid_send_is_refused_and_not_stored(
    ref_server: ServerProcess, peers: Callable[..., Peer], room: str
) -> None:
    peer = peers("p")
    no_temp_id = {"channel_id": room, "content": "x"}
    int_channel = {"channel_id": 7, "content": "x", "temp_id": "t"}
    for bad in (no_temp_id, int_channel):
        assert "error" in peer.call("send_message", bad)
    assert "error" in peer.call("join", {"rooms": room})
    assert backfill(ref_server, room).json() == []


def test_typing_reaches_others_but_not_sender(peers: Callable[..., Peer], room: str) -> None:
    alice, bob = peers("alice"), peers("bob")
    for peer in (alice, bob):
        peer.call("join", {"room": room})
    alice.client.emit("typing", {"channel": room})
    wait_for(lambda: bob.got["user_typing"] == [{"channel": room, "user_id": "alice"}])
    send(alice, room, 1)  # a round trip later, anything meant for alice has arrived
    wait_for(lambda: alice.ids() == [1])
    assert alice.got["user_typing"] == []


def test_mark_read_reaches_the_room_including_the_reader(
    peers: Callable[..., Peer], room: str
) -> None:
    alice, bob = peers("alice"), peers("bob")
    for peer in (alice, bob):
        peer.call("join", {"room": room})
    bob.client.emit("mark_read", {"channel_id": room, "message_id": 3})
    expected = [{"channel_id": room, "message_id": 3, "user_id": "bob"}]
    wait_for(lambda: alice.got["message_read"] == expected and bob.got["message_read"] == expected)


def test_leave_stops_live_delivery(peers: Callable[..., Peer], room: str) -> None:
    alice, bob = peers("alice"), peers("bob")
    for peer in (alice, bob):
        peer.call("join", {"room": room})
    assert bob.call("leave", {"room": room}) == {"ok": True}
    send(alice, room, 1)
    wait_for(lambda: alice.ids() == [1])
    bob.call("join", {"room": room + "-x"})  # round trip: an earlier message would be here now
    assert bob.ids() == []


def test_rest_backfill_honours_after_and_limit(
    ref_server: ServerProcess, peers: Callable[..., Peer], room: str
) -> None:
    send(peers("alice"), room, 5)
    everything = backfill(ref_server, room).json()
    assert [m["id"] for m in everything] == [1, 2, 3, 4, 5]
    assert [m["temp_id"] for m in everything] == ["t1", "t2", "t3", "t4", "t5"]
    assert set(everything[0]) == {"id", "channel_id", "sender_id", "content", "temp_id", "ts"}
    assert [m["id"] for m in backfill(ref_server, room, "?after=2&limit=2").json()] == [3, 4]
    assert [m["id"] for m in backfill(ref_server, room, "?after=4&limit=1000000").json()] == [5]
    assert backfill(ref_server, room, "?after=5").json() == []
    assert backfill(ref_server, room + "-never-used").json() == []


def test_rest_decodes_channel_ids(ref_server: ServerProcess, peers: Callable[..., Peer]) -> None:
    channel = f"a/b c-{uuid.uuid4().hex[:6]}"
    send(peers("p"), channel, 1)
    response = backfill(ref_server, requests.utils.quote(channel, safe=""))
    assert [m["channel_id"] for m in response.json()] == [channel]


def test_rest_requires_the_bearer_token(ref_server: ServerProcess, room: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = backfill(ref_server, room, headers=headers)
        assert response.status_code == 401 and "error" in response.json()


@pytest.mark.parametrize("query", ["?after=x", "?limit=abc", "?limit=0", "?after=-1", "?limit=1.5"])
def test_rest_bad_params_are_400(ref_server: ServerProcess, room: str, query: str) -> None:
    response = backfill(ref_server, room, query)
    assert response.status_code == 400 and "error" in response.json()


def test_other_paths_and_methods(ref_server: ServerProcess) -> None:
    for path in ("/", "/channels", "/channels//messages", "/channels/a/messages/x", "/nope"):
        assert requests.get(ref_server.url + path, timeout=5).status_code == 404
    response = requests.post(ref_server.url + "/channels/a/messages", headers=AUTH, timeout=5)
    assert response.status_code == 405


def test_bad_token_is_refused(ref_server: ServerProcess) -> None:
    check_a_wrong_token_is_refused(ref_server.url, lambda: _raw_socket(ref_server))


def _raw_socket(server: ServerProcess) -> websocket.WebSocket:
    ws = raw_socket(server.url)
    assert ws.recv().startswith('0{"sid":')  # Engine.IO open
    return ws


def test_raw_frames_match_the_protocol_doc(ref_server: ServerProcess, room: str) -> None:
    ws = _raw_socket(ref_server)
    try:
        ws.send(json.dumps({"token": TOKEN, "user_id": "alice"}).join(["40", ""]))
        assert ws.recv().startswith('40{"sid":')
        ws.send("420" + json.dumps(["join", {"room": room}]))
        assert ws.recv() == '430[{"ok":true,"last_id":null}]'
        payload = {"channel_id": room, "content": "hi", "temp_id": "t-1"}
        ws.send("421" + json.dumps(["send_message", payload]))
        frames = [ws.recv(), ws.recv()]
    finally:
        ws.close()
    echo = next(f for f in frames if f.startswith("42["))
    event, message = json.loads(echo[2:])
    assert event == "new_message"
    assert (message["id"], message["temp_id"], message["sender_id"]) == (1, "t-1", "alice")
    assert '431[{"id":1,"temp_id":"t-1"}]' in frames


def test_drop_live_every_loses_exactly_every_kth_fan_out(
    server_factory: Callable[..., ServerProcess], peers: Callable[..., Peer]
) -> None:
    server = server_factory(token=TOKEN, faults={"drop_live_every": 2})
    alice, bob = peers("alice", server=server), peers("bob", server=server)
    for peer in (alice, bob):
        peer.call("join", {"room": "r"})
    assert [ack["id"] for ack in send(alice, "r", 7)] == [1, 2, 3, 4, 5, 6, 7]
    # 7 is delivered and per-connection order holds, so once it is here nothing else is coming
    wait_for(lambda: bob.ids()[-1:] == [7] and len(alice.ids()) == 7)
    assert bob.ids() == [1, 3, 5, 7]
    assert alice.ids() == [1, 2, 3, 4, 5, 6, 7]
    assert [m["id"] for m in backfill(server, "r").json()] == [1, 2, 3, 4, 5, 6, 7]


def test_backfill_empty_and_ack_delay_faults(
    server_factory: Callable[..., ServerProcess], peers: Callable[..., Peer]
) -> None:
    server = server_factory(faults={"backfill_empty": True, "ack_delay_ms": 200})
    peer = peers("p", server=server)
    peer.call("join", {"room": "r"})
    started = time.monotonic()
    assert send(peer, "r", 1) == [{"id": 1, "temp_id": "t1"}]
    assert time.monotonic() - started >= 0.2
    assert peer.ids() == [1]  # the echo is not delayed, so it came before the ack
    response = backfill(server, "r", headers={})  # no token configured: no header needed
    assert (response.status_code, response.json()) == (200, [])


def test_reorder_every_swaps_a_senders_kth_message_with_its_next(
    server_factory: Callable[..., ServerProcess], peers: Callable[..., Peer]
) -> None:
    server = server_factory(token=TOKEN, faults={"reorder_every": 2})
    alice, bob = peers("alice", server=server), peers("bob", server=server)
    for peer in (alice, bob):
        peer.call("join", {"room": "r"})
    assert [ack["id"] for ack in send(alice, "r", 5)] == [1, 2, 3, 4, 5]  # acks in order
    wait_for(lambda: len(bob.ids()) == 5 and len(alice.ids()) == 5)
    assert bob.ids() == alice.ids() == [1, 3, 2, 5, 4]


def test_backfill_stall_and_huge_faults(server_factory: Callable[..., ServerProcess],
                                        peers: Callable[..., Peer]) -> None:
    server = server_factory(token=TOKEN, faults={"backfill_stall_s": 0.4, "backfill_huge_items": 2500})
    peer = peers("p", server=server)
    peer.call("join", {"room": "r"})
    send(peer, "r", 2)
    started = time.monotonic()
    response = backfill(server, "r", "?limit=1")
    assert time.monotonic() - started >= 0.4
    items = response.json()  # streamed in blocks, still one valid JSON list
    assert response.status_code == 200 and len(items) == 1 + 2500
    assert items[0]["temp_id"] == "t1" and items[-1]["temp_id"] == "junk-2499"
    assert backfill(server, "r", headers={}).status_code == 401  # the token is still checked


def test_ack_jitter_reorders_acks_of_one_socket(server_factory: Callable[..., ServerProcess],
                                                 peers: Callable[..., Peer]) -> None:
    server = server_factory(token=TOKEN, faults={"ack_jitter_ms": 300.0})
    peer = peers("p", server=server)
    peer.call("join", {"room": "r"})
    order: list[int] = []
    for i in range(1, 9):
        peer.client.emit("send_message", {"channel_id": "r", "content": "x", "temp_id": f"t{i}"},
                         callback=lambda ack: order.append(ack["id"]))
    wait_for(lambda: len(order) == 8 and len(peer.ids()) == 8)
    assert peer.ids() == list(range(1, 9))  # fanned out in the order stored
    assert order != sorted(order)  # acks handled concurrently, answered out of that order


@pytest.mark.parametrize("faults", [{"backfill_huge_items": -1}, {"reorder_every": 1.5},
                                    {"backfill_stall_s": -1}, {"ack_jitter_ms": "x"}])
def test_new_faults_are_checked(faults: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="bad faults"):
        start_server("py", faults=faults)


def test_stop_leaves_no_process() -> None:
    server = start_server("py")
    pid = server.pid
    server.stop()
    server.stop()  # idempotent
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=2)


def test_context_manager_and_fixed_port() -> None:
    port = free_port()
    with start_server("py", port=port) as server:
        assert server.port == port and server.running
    assert not server.running


def test_start_server_reports_a_port_in_use() -> None:
    with busy_port() as port:
        with pytest.raises(ServerError, match="(?i)address already in use") as caught:
            start_server("py", port=port)
    assert caught.value.port_taken  # a field to decide on, not the message text


def test_start_server_rejects_bad_input() -> None:
    assert "py" in VARIANTS
    with pytest.raises(UsageError, match="unknown server variant"):
        start_server("nope")
    with pytest.raises(UsageError, match="bad faults"):
        start_server("py", faults={"drop_everything": True})
    with pytest.raises(UsageError, match="bad faults"):
        start_server("py", faults={"drop_live_every": -1})


@pytest.mark.parametrize("args", [["nope"], ["py", "--port", "x"], ["py", "--faults", "{\"ack_delay_ms\": -1}"]])
def test_cli_bad_args_print_one_line_and_exit_2(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roombench.servers", *args],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


@pytest.mark.parametrize("variant", ["py", "node"])
def test_the_token_is_on_no_server_command_line(variant: str) -> None:
    import shutil

    if variant == "node" and shutil.which("node") is None:
        pytest.skip("node is not installed")
    secret = "tok-" + "c0mmand" * 3
    server = start_server(variant, token=secret)
    try:
        for proc in server._procs():
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert secret.encode() not in cmdline, cmdline
        peer = Peer(server.url, token=secret)  # it got the token: it accepts it
        peer.client.disconnect()
        with pytest.raises(socketio.exceptions.ConnectionError):  # and requires it
            Peer(server.url, token="wrong")
    finally:
        server.stop()
