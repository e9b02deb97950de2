"""Ack answers that resolve nothing, against the real lean and plain transports (scripted
peers over loopback): a non-integer id is one protocol error and acks nothing; an id never
issued is ``unknown_ack``; ``late_ack`` only for an id that was issued and timed out."""

from __future__ import annotations

from typing import Any

import gevent
import orjson
import pytest

from roombench.wire.profile import DEFAULT_PROFILE
from tests.helpers import Acks, ScriptedPeer, wait_until

pytestmark = pytest.mark.timeout(30)
SEND = DEFAULT_PROFILE.event("send_message")


@pytest.fixture
def make(transports: Any) -> Any:
    return transports


def _sio_ack(aid: bytes, payload: bytes = b'[{"ok":true}]') -> bytes:
    return b"43" + aid + payload


def _open(peer: ScriptedPeer, kind: str) -> None:
    """The server's side of the session's start: plain "connected", or Engine.IO open + CONNECT."""
    if kind == "ws":
        peer.send(orjson.dumps({"event": "connected", "data": {"sid": "s"}}))
    else:
        peer.accept()


def _run(make: Any, scripted: Any, kind: str, answers: list[bytes], *, sends: int = 1,
         ack_timeout: float = 5.0, pause: float = 0.0) -> tuple[list[Acks], Any]:
    """Connect, send ``sends`` acked messages, let the peer answer with ``answers``
    (after ``pause`` seconds), then one good answer to the first id as a sentinel."""
    got: list[bytes] = []

    def script(peer: ScriptedPeer, n: int) -> None:
        _open(peer, kind)
        for _ in range(sends):
            got.append(peer.recv())
        gevent.sleep(pause)
        for a in answers:
            peer.send(a)
        peer.hold()

    transport, rec = make(scripted(script), kind=kind, ack_timeout=ack_timeout)
    transport.connect()
    acks = [Acks() for _ in range(sends)]
    for ack in acks:
        assert transport.emit(SEND, {"room": "r", "content": "x"}, ack)
    assert wait_until(lambda: len(got) == sends)
    return acks, rec


@pytest.mark.parametrize("bad", [b'{"ack":"0","data":{}}', b'{"ack":true,"data":{}}', b'{"ack":0.0,"data":{}}'])
def test_ws_non_integer_ack_id_is_one_protocol_error_and_acks_nothing(make: Any, scripted: Any, bad: bytes) -> None:
    acks, rec = _run(make, scripted, "ws", [bad])
    assert wait_until(lambda: bool(rec.errors))
    gevent.sleep(0.1)
    assert [k for k, _ in rec.errors] == ["protocol_error"] and acks[0].calls == []


@pytest.mark.parametrize("bad", [_sio_ack(b"x"), _sio_ack(b'"0"'), b'43["0"]', b"43" + b"9" * 5000 + b"[1]"])
def test_sio_non_integer_ack_id_is_one_protocol_error_and_acks_nothing(make: Any, scripted: Any, bad: bytes) -> None:
    acks, rec = _run(make, scripted, "lean", [bad])
    assert wait_until(lambda: bool(rec.errors))
    gevent.sleep(0.1)
    assert [k for k, _ in rec.errors] == ["protocol_error"] and acks[0].calls == [], rec.errors


@pytest.mark.parametrize("kind, answer", [
    ("ws", b'{"ack":7,"data":{}}'), ("ws", b'{"ack":-1,"data":{}}'),
    ("lean", _sio_ack(b"7")), ("lean", _sio_ack(b"/,7")),  # the fast path and the codec's
])
def test_never_issued_ack_id_is_unknown_not_late(make: Any, scripted: Any, kind: str, answer: bytes) -> None:
    acks, rec = _run(make, scripted, kind, [answer])
    assert wait_until(lambda: bool(rec.errors))
    assert [k for k, _ in rec.errors] == ["unknown_ack"] and acks[0].calls == [], rec.errors


@pytest.mark.parametrize("kind, answer", [("ws", b'{"ack":0,"data":{}}'), ("lean", _sio_ack(b"0"))])
def test_answer_after_timeout_is_late_and_a_second_answer_unknown(make: Any, scripted: Any, kind: str,
                                                                   answer: bytes) -> None:
    acks, rec = _run(make, scripted, kind, [answer, answer], ack_timeout=0.2, pause=0.6)
    assert wait_until(lambda: len(rec.errors) == 2), rec.errors
    assert [k for k, _ in rec.errors] == ["late_ack", "unknown_ack"] and acks[0].calls == [(None, "timeout")]


@pytest.mark.parametrize("kind, answer", [("ws", b'{"ack":0,"data":{"ok":1}}'), ("lean", _sio_ack(b"0", b'[{"ok":1}]'))])
def test_a_good_answer_still_acks_once(make: Any, scripted: Any, kind: str, answer: bytes) -> None:
    acks, rec = _run(make, scripted, kind, [answer, answer])
    assert wait_until(lambda: len(rec.errors) == 1)
    assert acks[0].calls == [({"ok": 1}, None)] and [k for k, _ in rec.errors] == ["unknown_ack"]


def test_ack_table_late_vs_unknown() -> None:
    from roombench.transport.acks import AckTable

    errors: list[str] = []
    table = AckTable(0.0, lambda kind, _: errors.append(kind))
    a = Acks()
    aid = table.add(a)
    table.expire(float("inf"))
    table.answer(aid, None)
    table.answer(aid, None)
    table.answer(99, None)
    assert errors == ["late_ack", "unknown_ack", "unknown_ack"] and a.calls == [(None, "timeout")]


@pytest.mark.parametrize("kind, answer", [("ws", b'{"ack":0,"data":{"ok":1}}'), ("lean", _sio_ack(b"0", b'[{"ok":1}]'))])
def test_each_callback_gets_the_arg_it_was_emitted_with(make: Any, scripted: Any, kind: str, answer: bytes) -> None:
    # one bound method serves every message (no partial per send): the arg tells them apart,
    # on an answer, on a timeout and when the connection goes
    calls: list[tuple[Any, Any, str | None]] = []

    def script(peer: ScriptedPeer, n: int) -> None:
        _open(peer, kind)
        for _ in range(2):
            peer.recv()
        peer.send(answer)
        peer.hold()

    transport, _ = make(scripted(script), kind=kind, ack_timeout=0.3)
    transport.connect()
    record = lambda arg, payload, error: calls.append((arg, payload, error))  # noqa: E731
    for arg in ("m0", ("m1", 1)):
        assert transport.emit(SEND, {"room": "r", "content": "x"}, record, arg)
    assert wait_until(lambda: len(calls) == 2, timeout=5)  # m0 answered, m1 timed out
    assert transport.emit(SEND, {"room": "r", "content": "x"}, record, 7)
    transport.close()
    assert calls == [("m0", {"ok": 1}, None), (("m1", 1), None, "timeout"), (7, None, "disconnected")]


@pytest.mark.parametrize("kind", ["ws", "lean"])
def test_big_frames_of_concurrent_greenlets_arrive_whole(make: Any, scripted: Any, kind: str) -> None:
    # frames bigger than the socket buffers, from two greenlets: a send that has to wait for
    # buffer space holds the other greenlet's frames back (they never interleave)
    size, per = 4_000_000, 2
    got: list[bytes] = []

    def script(peer: ScriptedPeer, n: int) -> None:
        _open(peer, kind)
        gevent.sleep(0.3)  # let the client's buffers fill first
        for _ in range(2 * per):
            got.append(peer.recv())
        peer.hold()

    transport, rec = make(scripted(script), kind=kind)
    transport.connect()

    def sender(who: str) -> None:
        for i in range(per):
            assert transport.emit(SEND, {"who": who, "i": i, "content": who * size})

    gevent.joinall([gevent.spawn(sender, "a"), gevent.spawn(sender, "b")], timeout=20, raise_error=True)
    assert wait_until(lambda: len(got) == 2 * per, timeout=20)
    bodies = [orjson.loads(m) if kind == "ws" else orjson.loads(m[2:])[1] for m in got]
    if kind == "ws":
        bodies = [b["data"] for b in bodies]
    assert sorted((b["who"], b["i"]) for b in bodies) == sorted((w, i) for w in "ab" for i in range(per))
    assert all(b["content"] == b["who"] * size for b in bodies) and not rec.errors


def test_the_sweeper_expires_late_acks_each_sweep_and_checks_pings_once_a_check_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 19,800 idle connections: a Python call for each, four times a second, was most of an
    # idle generator's CPU. Ack tables are found by their pending acks; ping checks (whose
    # deadlines are tens of seconds) run once per PING_CHECK_INTERVAL, not every sweep
    from roombench.transport import acks as acks_module
    from roombench.transport.acks import AckTable

    monkeypatch.setattr(acks_module, "SWEEP_INTERVAL", 0.02)
    monkeypatch.setattr(acks_module, "PING_CHECK_INTERVAL", 0.2)
    sweeper = acks_module._Sweeper()
    late, idle = AckTable(0.05, lambda *_: None), AckTable(0.05, lambda *_: None)
    calls: list[tuple[Any, Any, str | None]] = []
    late.add(lambda *a: calls.append(a), "m")
    checks: list[float] = []
    sweeper.add("late", late, checks.append)
    sweeper.add("idle", idle)
    gevent.sleep(0.5)
    sweeper.discard("late")
    sweeper.discard("idle")
    assert calls == [("m", None, "timeout")]  # expired by a sweep: nobody answered
    assert 1 <= len(checks) <= 3, len(checks)  # ~25 sweeps ran
