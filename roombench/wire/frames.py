"""RFC 6455 WebSocket frames without I/O.

Client frames are built by a :class:`FrameWriter` (one per process, it owns the mask);
server frames are read by a :class:`FrameParser` over the connection's receive buffer.
Anything we cannot parse raises :class:`~roombench.exceptions.ProtocolError` naming what was wrong.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any


from roombench.exceptions import ProtocolError

# RFC 6455 opcodes
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

#: a server frame larger than this is refused rather than buffered without bound
MAX_FRAME = 64 * 1024 * 1024

#: a frame payload: bytes, or bytearray when parsed from a bytearray buffer
Payload = bytes | bytearray

_H_SHORT = struct.Struct("!BB4s")
_H_MEDIUM = struct.Struct("!BBH4s")
_H_LONG = struct.Struct("!BBQ4s")


# --------------------------------------------------------------------------- frames


#: the mask key of the process's writer (:func:`shared_writer`): all zero, so masking is a no-op
ZERO_KEY = b"\x00\x00\x00\x00"


def random_mask_key() -> bytes:
    """A random 4-byte mask key whose four bytes are equal (and non-zero).

    RFC 6455 wants a fresh unpredictable key per frame to protect naive proxies from
    cache poisoning; a load generator talking to its own servers does not need that,
    and a uniform key turns masking into one ``bytes.translate`` call (about 5x
    cheaper than the big-int XOR for a 150-byte frame, 10x cheaper than websocket-client's).
    Servers unmask it like any other key.
    """
    return bytes((1 + os.urandom(1)[0] % 255,)) * 4


def mask(key: bytes, data: bytes | bytearray) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``key`` (masking and unmasking are the same)."""
    n = len(data)
    if not n:
        return b""
    if key[0] == key[1] == key[2] == key[3]:
        return bytes(data).translate(_xor_table(key[0]))
    reps = key * (n // 4 + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(
        n, "little"
    )


@functools.lru_cache(maxsize=256)  # one per key byte: built once, not once per connection
def _xor_table(k: int) -> bytes:
    return bytes(b ^ k for b in range(256))


def encode_frame(opcode: int, payload: bytes | bytearray, key: bytes | None, fin: bool = True) -> bytes:
    """One frame; masked with ``key`` (client to server) or unmasked when key is None."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if key is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if key is None:
        return head + payload
    return head + key + mask(key, payload)


class FrameWriter:
    """Builds masked client frames with one mask key for the life of a connection."""

    __slots__ = ("key", "_table", "_short", "_plain")

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key if key is not None else random_mask_key()
        if len(self.key) != 4:
            raise ValueError("a WebSocket mask key has exactly 4 bytes")
        uniform = self.key[0] == self.key[1] == self.key[2] == self.key[3]
        self._table = _xor_table(self.key[0]) if uniform else None
        self._plain = self.key == ZERO_KEY  # XOR with 0: the payload goes as it is
        # the header of every text frame shorter than _READY, ready-made: no packing on the hot path
        self._short = _short_headers(self.key)

    def text(self, payload: bytes) -> bytes:
        """A final text frame carrying ``payload`` (UTF-8 bytes)."""
        table = self._table
        if table is None:
            return encode_frame(OP_TEXT, payload, self.key)
        n = len(payload)
        body = payload if self._plain else payload.translate(table)
        if n < _READY:
            return self._short[n] + body
        if n < 65536:
            return _H_MEDIUM.pack(0x81, 0xFE, n, self.key) + body
        return _H_LONG.pack(0x81, 0xFF, n, self.key) + body

    def pong(self, payload: bytes | bytearray = b"") -> bytes:
        """A pong answering a ping with ``payload``."""
        return encode_frame(OP_PONG, payload, self.key)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """A close frame with a status code and an optional reason."""
        return encode_frame(OP_CLOSE, close_payload(code, reason), self.key)


@functools.lru_cache(maxsize=1)
def shared_writer() -> FrameWriter:
    """The process's writer: one key for all its connections, the zero key.

    A writer holds nothing but its key and tables derived from it, so connections can
    share one: a writer and a table of 126 headers per key cost ~0.1 KB per idle connection.
    The zero key is a valid key (RFC 6455 5.3: the server XORs with it like with any other)
    and spares the generator the masking of every frame it sends (the yardstick
    ``bench/generators/raw_client.py`` does the same): ~1,500 of ~70,000 instructions
    per ack in ``bench/micro/bench_hotpath`` (counted under callgrind).
    """
    return FrameWriter(ZERO_KEY)


#: text frames shorter than this get a ready-made header (a chat message with its ack id
#: is ~140 bytes: past the 125 of a one-byte length, so the 2-byte lengths are made too)
_READY = 2048


@functools.lru_cache(maxsize=16)  # one key per writer; the process writer uses one
def _short_headers(key: bytes) -> tuple[bytes, ...]:
    return (tuple(_H_SHORT.pack(0x81, 0x80 | n, key) for n in range(126))
            + tuple(_H_MEDIUM.pack(0x81, 0xFE, n, key) for n in range(126, _READY)))


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame; RFC 6455 caps control payloads at 125 bytes."""
    body = struct.pack("!H", code) + reason.encode()
    if len(body) > 125:
        raise ValueError("close reason too long: control frames carry at most 125 bytes")
    return body


def parse_close_payload(payload: bytes | bytearray) -> tuple[int | None, str]:
    """(status code or None, reason) of a received close frame."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload (a status code has 2 bytes)")
    code = (payload[0] << 8) | payload[1]
    return code, bytes(payload[2:]).decode("utf-8", "replace")


class FrameParser:
    """Reads every complete frame from a receive buffer; reassembles fragmented messages.

    :meth:`parse` returns ``([(opcode, payload), ...], consumed)``: data messages
    (text/binary, continuation frames already joined) and control frames in arrival
    order, and how many bytes from the start of the buffer they used. An incomplete
    frame at the end is left for the next call; a fragmented message in progress is
    kept here between calls.
    """

    __slots__ = ("_frag_op", "_frags")

    def __init__(self) -> None:
        self._frag_op = 0
        self._frags: list[Payload] | tuple[()] = ()  # a list only while a fragmented message is open

    def parse(
        self, buf: bytearray | bytes | memoryview, end: int | None = None
    ) -> tuple[list[tuple[int, Payload]], int]:
        """Parse ``buf[:end]``; see the class docstring.

        Payloads are slices of ``buf`` (bytearray for a bytearray buffer): copies, safe to
        keep after the buffer is reused. A memoryview is copied once to bytes first.
        """
        if isinstance(buf, memoryview):
            buf = buf.tobytes()
        if end is None:
            end = len(buf)
        out: list[tuple[int, Payload]] = []
        append = out.append
        pos = 0
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 < 126:  # unmasked, 7-bit length: nearly every server frame
                head = pos + 2
                stop = head + b1
            elif b1 == 126:  # unmasked, 16-bit length
                if end - pos < 4:
                    break
                head = pos + 4
                stop = head + ((buf[pos + 2] << 8) | buf[pos + 3])
            else:
                head, stop = _long_or_masked_header(buf, pos, end, b1)
                if head < 0:
                    break
            if stop > end:
                break
            payload = buf[head:stop]
            if b1 & 0x80:  # servers must not mask, but unmasking is cheap to allow
                payload = mask(bytes(buf[head - 4 : head]), payload)
            if b0 == 0x81 and not self._frag_op:  # a whole text message in one frame
                append((OP_TEXT, payload))
            else:
                self._slow_frame(b0, payload, append)
            pos = stop
        return out, pos

    def _slow_frame(self, b0: int, payload: Payload, append: Any) -> None:
        if b0 & 0x70:
            raise ProtocolError(f"frame with reserved bits set (0x{b0 & 0x70:02x}); no extension was negotiated")
        fin = b0 & 0x80
        op = b0 & 0x0F
        if op in _CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(f"fragmented control frame (opcode 0x{op:x})")
            if len(payload) > 125:
                raise ProtocolError(f"control frame with {len(payload)}-byte payload (max 125)")
            append((op, payload))
        elif op in _DATA_OPCODES:
            if self._frag_op:  # (also reached for an unfragmented 0x81 during a fragmented message)
                raise ProtocolError("new data frame while a fragmented message is open")
            if fin:
                append((op, payload))
            else:
                self._frag_op = op
                self._frags = [payload]
        elif op == OP_CONT:
            if not self._frag_op:
                raise ProtocolError("continuation frame without a message to continue")
            self._frags.append(payload)  # type: ignore[union-attr]
            if fin:
                append((self._frag_op, b"".join(self._frags)))
                self._frag_op = 0
                self._frags = ()
        else:
            raise ProtocolError(f"unknown frame opcode 0x{op:x}")


def _long_or_masked_header(buf: Any, pos: int, end: int, b1: int) -> tuple[int, int]:
    """(payload start, payload end) of a frame with a 64-bit length or a mask; (-1, -1)
    while the header itself is incomplete."""
    n = b1 & 0x7F
    head = pos + 2
    if n == 126:
        if end - pos < 4:
            return -1, -1
        n = (buf[pos + 2] << 8) | buf[pos + 3]
        head = pos + 4
    elif n == 127:
        if end - pos < 10:
            return -1, -1
        n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        if n > MAX_FRAME:
            raise ProtocolError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
        head = pos + 10
    if b1 & 0x80:
        head += 4
        if head > end:
            return -1, -1
    return head, head + n


