"""roombench.wire.frames and roombench.wire.packets: frames and packets, no I/O."""

from __future__ import annotations

import struct

import orjson
import pytest
from websocket._abnf import ABNF

from roombench.wire import frames as wsframes, packets
from roombench.wire.frames import FrameParser, FrameWriter
from roombench.wire.packets import Packet, decode_packet
from roombench.exceptions import ProtocolError

pytestmark = pytest.mark.timeout(10)

LENGTHS = [0, 1, 125, 126, 127, 2047, 2048, 65535, 65536, 70000]  # 2048: past the ready-made headers


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame, as a server sends it."""
    return wsframes.encode_frame(opcode, payload, None, fin=fin)


def unmask_client_frame(frame: bytes) -> tuple[int, int, bytes]:
    """(first byte, payload length, unmasked payload) of a masked client frame."""
    parser = FrameParser()
    frames, used = parser.parse(bytearray(frame))
    assert used == len(frame) and len(frames) == 1
    return frame[0], len(frames[0][1]), bytes(frames[0][1])


# ----------------------------------------------------------------------- masking


@pytest.mark.parametrize("key", [b"\x5a\x5a\x5a\x5a", b"\x01\x02\x03\x04", b"\x00\xff\x10\x80"])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 130, 1001])
def test_mask_matches_websocket_client(key: bytes, n: int) -> None:
    data = bytes(range(256)) * (n // 256 + 1)
    data = data[:n]
    assert wsframes.mask(key, data) == ABNF.mask(key, data)
    assert wsframes.mask(key, wsframes.mask(key, data)) == data


def test_random_mask_key_is_uniform_and_nonzero() -> None:
    for _ in range(50):
        key = wsframes.random_mask_key()
        assert len(key) == 4 and key[0] != 0 and key == bytes([key[0]]) * 4


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("key", [b"\x33\x33\x33\x33", b"\x01\x02\x03\x04", wsframes.ZERO_KEY])
def test_writer_text_frame_equals_websocket_client_frame(n: int, key: bytes) -> None:
    payload = (b"0123456789" * (n // 10 + 1))[:n]
    ours = FrameWriter(key).text(payload)
    theirs = ABNF(1, 0, 0, 0, ABNF.OPCODE_TEXT, 1, payload)
    theirs.get_mask_key = lambda _n: key
    assert ours == theirs.format()


@pytest.mark.parametrize("n", LENGTHS)
def test_writer_text_frame_round_trips_through_parser(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    b0, length, body = unmask_client_frame(FrameWriter().text(payload))
    assert b0 == 0x81 and length == n and body == payload


def test_the_process_writer_masks_with_the_zero_key_so_the_payload_goes_as_it_is() -> None:
    frame = wsframes.shared_writer().text(b"42[\"x\"]")
    assert frame == b"\x81\x87" + wsframes.ZERO_KEY + b'42["x"]'  # the mask bit set, as RFC 6455 wants


def test_writer_rejects_bad_key() -> None:
    with pytest.raises(ValueError):
        FrameWriter(b"abc")


def test_pong_and_close_frames() -> None:
    writer = FrameWriter()
    b0, _, body = unmask_client_frame(writer.pong(b"hi"))
    assert b0 == 0x80 | wsframes.OP_PONG and body == b"hi"
    b0, _, body = unmask_client_frame(writer.close(1001, "bye"))
    assert b0 == 0x80 | wsframes.OP_CLOSE
    assert wsframes.parse_close_payload(body) == (1001, "bye")
    assert wsframes.parse_close_payload(b"") == (None, "")
    with pytest.raises(ValueError):
        wsframes.close_payload(1000, "x" * 124)
    with pytest.raises(ProtocolError, match="1-byte"):
        wsframes.parse_close_payload(b"\x03")


# ----------------------------------------------------------------------- parsing


@pytest.mark.parametrize("n", LENGTHS)
def test_parse_each_length_class(n: int) -> None:
    payload = bytes(i % 7 + 48 for i in range(n))
    frames, used = FrameParser().parse(bytearray(server_frame(wsframes.OP_TEXT, payload)))
    assert frames == [(wsframes.OP_TEXT, payload)]
    assert used == len(server_frame(wsframes.OP_TEXT, payload))


@pytest.mark.parametrize("n", [5, 200, 70000])
def test_partial_buffer_yields_nothing_until_complete(n: int) -> None:
    frame = server_frame(wsframes.OP_TEXT, b"x" * n)
    parser = FrameParser()
    for cut in sorted({c for c in (0, 1, 2, 3, 5, 9, len(frame) - 1) if c < len(frame)}):
        frames, used = parser.parse(bytearray(frame[:cut]))
        assert (frames, used) == ([], 0), cut
    tail = b"\x81\x05ab"  # the start of a next frame must stay unconsumed
    frames, used = parser.parse(bytearray(frame + tail))
    assert frames == [(wsframes.OP_TEXT, b"x" * n)] and used == len(frame)


def test_parse_respects_end_argument() -> None:
    frame = server_frame(wsframes.OP_TEXT, b"hello")
    buf = bytearray(1024)
    buf[: len(frame)] = frame
    assert FrameParser().parse(buf, len(frame) - 1) == ([], 0)
    assert FrameParser().parse(buf, len(frame)) == ([(wsframes.OP_TEXT, b"hello")], len(frame))


def test_many_frames_in_one_buffer() -> None:
    payloads = [b"42" + orjson.dumps(["new_message", {"i": i}]) for i in range(100)]
    stream = b"".join(server_frame(wsframes.OP_TEXT, p) for p in payloads)
    frames, used = FrameParser().parse(memoryview(bytearray(stream)))
    assert [bytes(p) for _, p in frames] == payloads and used == len(stream)


def test_fragmented_message_with_interleaved_ping_across_calls() -> None:
    parts = [server_frame(wsframes.OP_TEXT, b"42[\"a\",", fin=False),
             server_frame(wsframes.OP_PING, b"p"),
             server_frame(wsframes.OP_CONT, b"{\"k\":", fin=False),
             server_frame(wsframes.OP_CONT, b"1}]")]
    parser = FrameParser()
    frames, used = parser.parse(bytearray(parts[0] + parts[1]))
    assert frames == [(wsframes.OP_PING, b"p")] and used == len(parts[0] + parts[1])
    frames, used = parser.parse(bytearray(parts[2] + parts[3]))
    assert frames == [(wsframes.OP_TEXT, b'42["a",{"k":1}]')]


def test_masked_server_frame_is_unmasked() -> None:
    frame = wsframes.encode_frame(wsframes.OP_TEXT, b"hello there", b"\x01\x02\x03\x04")
    assert FrameParser().parse(bytearray(frame)) == ([(wsframes.OP_TEXT, b"hello there")], len(frame))


def test_control_frames() -> None:
    stream = (server_frame(wsframes.OP_PING, b"a") + server_frame(wsframes.OP_PONG, b"")
              + server_frame(wsframes.OP_CLOSE, wsframes.close_payload(1000, "done")))
    frames, _ = FrameParser().parse(bytearray(stream))
    assert [op for op, _ in frames] == [wsframes.OP_PING, wsframes.OP_PONG, wsframes.OP_CLOSE]
    assert wsframes.parse_close_payload(frames[2][1]) == (1000, "done")


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"\xc1\x00", "reserved bits"),
        (b"\x83\x00", "unknown frame opcode"),
        (b"\x09\x00", "fragmented control frame"),
        (b"\x89\x7e\x00\x80" + b"x" * 128, "control frame with 128-byte payload"),
        (b"\x80\x01x", "continuation frame without"),
        (b"\x01\x01a\x81\x01b", "fragmented message is open"),
        (b"\x01\x01a\x02\x01b", "fragmented message is open"),
        (b"\x81\x7f" + struct.pack("!Q", 2**40), "exceeds"),
    ],
)
def test_malformed_frames_raise_protocol_error(stream: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameParser().parse(bytearray(stream))


# ----------------------------------------------------------------------- packets


def test_encode_connect_default_and_custom_namespace() -> None:
    assert packets.encode_connect("/", {"token": "t"}) == b'40{"token":"t"}'
    assert packets.encode_connect("/", None) == b"40"
    assert packets.encode_connect("/chat", {"token": "t"}) == b'40/chat,{"token":"t"}'
    assert packets.encode_connect("/chat") == b"40/chat,"


def test_encode_event_ack_disconnect_error_open() -> None:
    assert packets.encode_event("join", {"room": "r"}) == b'42["join",{"room":"r"}]'
    assert packets.encode_event("join", {"room": "r"}, 7) == b'427["join",{"room":"r"}]'
    assert packets.encode_event("x", None, 3, "/ns") == b'42/ns,3["x"]'
    assert packets.encode_ack(12, {"ok": True}) == b'4312[{"ok":true}]'
    assert packets.encode_ack(1, None, "/ns") == b"43/ns,1[]"
    assert packets.encode_disconnect() == b"41"
    assert packets.encode_disconnect("/ns") == b"41/ns,"
    assert packets.encode_connect_error("nope") == b'44{"message":"nope"}'
    assert decode_packet(packets.encode_open("s1", 100, 200)).data["pingInterval"] == 100
    assert packets.PING_PACKET == b"2" and packets.PONG_PACKET == b"3" and packets.CLOSE_PACKET == b"1"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'0{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000}',
         Packet(packets.OPEN, data={"sid": "a", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000})),
        (b"1", Packet(packets.CLOSE)),
        (b"2", Packet(packets.PING)),
        (b"2probe", Packet(packets.PING, data="probe")),
        (b"3", Packet(packets.PONG)),
        (b"6", Packet(packets.NOOP)),
        (b'40{"sid":"x"}', Packet(packets.CONNECT, "/", None, {"sid": "x"})),
        (b'40/chat,{"sid":"x"}', Packet(packets.CONNECT, "/chat", None, {"sid": "x"})),
        (b"41", Packet(packets.DISCONNECT)),
        (b"41/chat,", Packet(packets.DISCONNECT, "/chat")),
        (b"41/chat", Packet(packets.DISCONNECT, "/chat")),
        (b'42["new_message",{"id":1}]', Packet(packets.EVENT, "/", None, ["new_message", {"id": 1}])),
        (b'42/chat,5["e",1,2]', Packet(packets.EVENT, "/chat", 5, ["e", 1, 2])),
        (b'4317[{"id":3,"temp_id":"t"}]', Packet(packets.ACK, "/", 17, [{"id": 3, "temp_id": "t"}])),
        (b"430[]", Packet(packets.ACK, "/", 0, [])),
        (b'43/chat,2[null]', Packet(packets.ACK, "/chat", 2, [None])),
        (b'44{"message":"invalid token"}', Packet(packets.CONNECT_ERROR, "/", None, {"message": "invalid token"})),
        (b'451-["up",{"_placeholder":true,"num":0}]',
         Packet(packets.BINARY_EVENT, "/", None, ["up", {"_placeholder": True, "num": 0}])),
    ],
)
def test_decode_every_packet_kind(raw: bytes, expected: Packet) -> None:
    assert decode_packet(raw) == expected
    assert decode_packet(bytearray(raw)) == expected


def test_encode_decode_round_trip() -> None:
    pkt = decode_packet(packets.encode_event("send_message", {"content": "héllo \u2603"}, 99, "/x"))
    assert pkt == Packet(packets.EVENT, "/x", 99, ["send_message", {"content": "héllo \u2603"}])
    assert decode_packet(packets.encode_ack(4, [1, 2])).data == [[1, 2]]


def test_connect_error_message() -> None:
    assert packets.connect_error_message({"message": "invalid token"}) == "invalid token"
    assert packets.connect_error_message("legacy") == "legacy"
    assert packets.connect_error_message(None) == "no reason given"


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "empty Engine.IO packet"),
        (b"9", "unknown Engine.IO packet type '9'"),
        (b"x", "unknown Engine.IO packet type 'x'"),
        (b"4", "without a Socket.IO packet type"),
        (b"49", "unknown Socket.IO packet type '9'"),
        (b"0{", "invalid JSON in Engine.IO OPEN"),
        (b'0{"sid":"a"}', "lacks sid/pingInterval/pingTimeout"),
        (b"42[oops", "invalid JSON in EVENT"),
        (b'42{"a":1}', "needs a JSON array starting with the event name"),
        (b"42[]", "needs a JSON array starting with the event name"),
        (b"42[1]", "needs a JSON array starting with the event name"),
        (b"43[1]", "ACK packet without an ack id"),
        (b'431{"a":1}', "ACK packet needs a JSON array"),
        (b"40[1]", "CONNECT packet payload is not a JSON object"),
        (b'45["e"]', "without an attachment count"),
    ],
)
def test_malformed_packets_raise_protocol_error(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[")):
        decode_packet(raw)


def test_an_ack_id_of_thousands_of_digits_is_a_protocol_error() -> None:
    # int() refuses more than 4300 digits with ValueError: that must not escape the decoder
    with pytest.raises(ProtocolError):
        packets.decode_packet(b"43/chat," + b"9" * 5000 + b"[1]")
