"""Fuzzing the receive path: whatever a server sends, the frame parser, the packet decoder
and the transports' message/ack handlers never raise out of it; every bad input is a
ProtocolError (the parser, the decoder) or at most one counted error (the transports)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roombench.exceptions import ProtocolError
from roombench.transport.plainws import PlainWsTransport
from roombench.transport.socketio import LeanTransport
from roombench.wire import frames as wsframes, packets
from roombench.wire.profile import DEFAULT_PROFILE
from tests.helpers import Acks, Recorder

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: it refuses ints beyond 64 bits, servers may not


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
EVENTS = sorted(DEFAULT_PROFILE.wire_events) + ["connected", "connect_error", "nope"]
#: Engine.IO / Socket.IO prefixes, so the fuzz reaches past the first byte's checks
PREFIXES = [b"", b"0", b"1", b"2", b"3", b"4", b"6", b"40", b"41", b"42", b"43", b"44", b"45", b"46",
            b"430", b"431", b"43/,", b"42/chat,", b"451-", b"4399999999999999999999999999"]


@settings(FUZZ)
@given(st.binary(max_size=300))
def test_frame_parser_takes_any_bytes(data: bytes) -> None:
    parser = wsframes.FrameParser()
    try:
        frames, used = parser.parse(bytearray(data))
    except ProtocolError:
        return
    assert 0 <= used <= len(data)
    assert all(isinstance(op, int) for op, _ in frames)


@settings(FUZZ)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_frame_parser_takes_any_bytes_in_pieces(chunks: list[bytes]) -> None:
    parser, buf = wsframes.FrameParser(), bytearray()
    for chunk in chunks:
        buf += chunk
        try:
            _, used = parser.parse(buf)
        except ProtocolError:
            return
        del buf[:used]


@settings(FUZZ)
@given(st.sampled_from(PREFIXES), st.binary(max_size=120) | json_values.map(_dumps))
def test_decode_packet_takes_any_bytes(prefix: bytes, rest: bytes) -> None:
    try:
        packet = packets.decode_packet(prefix + rest)
    except ProtocolError:
        return
    assert packet[2] is None or isinstance(packet[2], int)  # an ack id is an int or absent


class _Conn:
    """The few fields of a connection the receive path reads and writes."""

    def __init__(self) -> None:
        self.sid: str | None = "s"
        self.ping_window = 45.0
        self.ping_deadline = 0.0
        self.refused: str | None = None


def _receiver(cls: type) -> tuple[Any, Recorder, list[str]]:
    """A transport of ``cls`` whose sends and aborts are recorded, not done: only the
    receive path runs. Two acks are pending, so real ids hit real entries."""
    aborts: list[str] = []

    class Receiver(cls):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def _send(self, conn: Any, packet: bytes) -> bool:
            return True

        def _abort(self, conn: Any, reason: str) -> None:
            aborts.append(reason)

    rec = Recorder()
    transport = Receiver("http://127.0.0.1:1", DEFAULT_PROFILE, rec.handlers, ack_timeout=5.0)
    transport._acks.add(Acks())
    transport._acks.add(Acks())
    return transport, rec, aborts


def _feed(cls: type, payload: bytes) -> None:
    transport, rec, aborts = _receiver(cls)
    transport._on_text(_Conn(), payload)  # must not raise
    kinds = [kind for kind, _ in rec.errors]
    assert len(kinds) + len(aborts) <= 1, (payload, rec.errors, aborts)
    assert "handler_error" not in kinds, (payload, rec.errors)  # our handlers do not fail: any is ours


@settings(FUZZ)
@given(st.sampled_from(PREFIXES), st.binary(max_size=120) | json_values.map(_dumps))
def test_lean_receive_path_never_raises(prefix: bytes, rest: bytes) -> None:
    _feed(LeanTransport, prefix + rest)


@settings(FUZZ)
@given(st.sampled_from([b"42", b"43", b"430", b"431", b"437"]),
       st.lists(st.sampled_from(EVENTS) | json_values, max_size=3))
def test_lean_events_and_acks_of_any_json(prefix: bytes, args: list[Any]) -> None:
    _feed(LeanTransport, prefix + _dumps(args))


envelopes = st.fixed_dictionaries({}, optional={"event": st.sampled_from(EVENTS) | json_values,
                                                "data": json_values,
                                                "ack": st.integers(-3, 5) | json_values})


@settings(FUZZ)
@given(envelopes | json_values)
def test_plain_ws_receive_path_never_raises(msg: Any) -> None:
    _feed(PlainWsTransport, _dumps(msg))


@settings(FUZZ)
@given(st.binary(max_size=120))
def test_plain_ws_takes_any_bytes(data: bytes) -> None:
    _feed(PlainWsTransport, data)


@pytest.mark.parametrize("cls", [LeanTransport, PlainWsTransport])
def test_a_pending_ack_is_still_answered_after_fuzz(cls: type) -> None:
    # the harness itself works: a good answer to a pending id acks it, no error
    transport, rec, _ = _receiver(cls)
    ack = Acks()
    aid = transport._acks.add(ack)
    good = (b"43" + str(aid).encode() + b'[{"ok":1}]' if cls is LeanTransport
            else orjson.dumps({"ack": aid, "data": {"ok": 1}}))
    transport._on_text(_Conn(), good)
    assert ack.calls == [({"ok": 1}, None)] and rec.errors == []
