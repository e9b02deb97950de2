"""A small TCP impairment proxy on loopback: latency, jitter, a bandwidth cap, resets, stalls.

``roombench run --impair SPEC`` starts it as its own process in front of the server (the
generator is gevent-patched; this is plain asyncio) and points the load at it; ``roombench
proxy`` runs it standalone. Linux ``tc netem`` would do most of this too, but needs root
and a network namespace to leave the machine's loopback alone; a proxy works anywhere,
and it can reset (RST) or stall connections on a schedule, which netem cannot.

SPEC is comma-separated items (times count from the first client connection, so the
startup of whatever connects does not eat into the schedule)::

    latency=50ms        one-way delay added to every chunk, each direction (RTT + 2x)
    jitter=10ms         +- uniform on top of latency; byte order is always kept
    bandwidth=1mbit     cap per direction, shared by all connections (bit, kbit, mbit, gbit)
    reset-every=10s     every 10 s, RST every connection open then (reset-every=10s:25%: a random quarter)
    reset-all@5s        at 5 s, RST every open connection (repeatable)
    stall@8s:2s         from 8 s, forward nothing for 2 s; data waits, nothing is lost (repeatable)

Every chunk read is released no earlier than ``arrival + latency +- jitter`` (and after the
chunk before it, and after its turn on the capped link). A reset sets SO_LINGER 0 on both
sockets and closes them: both ends see a TCP RST, as from a middlebox that lost its state.
The TCP handshake itself is not delayed (the proxy accepts at once), everything after it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from roombench.exceptions import UsageError

__all__ = ["Impairment", "Proxy", "parse_spec", "parse_ready", "READY", "STATS", "main"]

#: first line the proxy prints once it listens: ``READY <host>:<port>``
READY = "roombench-proxy ready"
#: last line it prints on the way out: ``STATS {json}``
STATS = "roombench-proxy stats"
#: chunks queued per direction before the proxy stops reading (TCP pushes back beyond that)
QUEUE_CHUNKS = 64
CHUNK = 65536

_TIME = re.compile(r"^([0-9]+(?:\.[0-9]*)?)(us|ms|s|m)$")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]*)?)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_EXAMPLE = "e.g. latency=50ms,jitter=10ms,bandwidth=1mbit,reset-every=10s,reset-all@5s,stall@8s:2s"


@dataclass(frozen=True)
class Impairment:
    """What the proxy does to the traffic (seconds, bits/s; 0 = off)."""

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float = 0.0
    reset_every: float = 0.0
    reset_fraction: float = 1.0
    reset_all_at: tuple[float, ...] = ()
    stalls: tuple[tuple[float, float], ...] = ()  # (start, length)
    spec: str = ""

    def to_dict(self) -> dict[str, Any]:
        """For run metadata."""
        return {"spec": self.spec, "latency_s": self.latency, "jitter_s": self.jitter, "bandwidth_bps": self.bandwidth,
                "reset_every_s": self.reset_every, "reset_fraction": self.reset_fraction,
                "reset_all_at_s": list(self.reset_all_at), "stalls_s": [list(s) for s in self.stalls]}


def _seconds(text: str, item: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise UsageError(f"bad --impair item {item!r}: {text!r} is not a time like 50ms, 2s or 1.5m")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _rate(text: str, item: str) -> float:
    m = _RATE.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"bad --impair item {item!r}: {text!r} is not a rate > 0 like 512kbit or 1mbit")
    return float(m.group(1)) * _RATE_UNITS[m.group(2)]


def _fraction(text: str, item: str) -> float:
    m = re.match(r"^([0-9]+(?:\.[0-9]*)?)%$", text.strip())
    if not m or not 0 < float(m.group(1)) <= 100:
        raise UsageError(f"bad --impair item {item!r}: {text!r} is not a share like 25% (> 0, at most 100%)")
    return float(m.group(1)) / 100.0


def parse_spec(spec: str) -> Impairment:
    """The SPEC of ``--impair``; UsageError (one line naming the item) when it is wrong."""
    values: dict[str, Any] = {"reset_all_at": [], "stalls": []}
    items = [i.strip() for i in spec.split(",")]
    if not spec.strip() or any(not i for i in items):
        raise UsageError(f"bad --impair {spec!r}: empty item ({_EXAMPLE})")
    for item in items:
        if item.startswith("reset-all@"):
            values["reset_all_at"].append(_seconds(item[len("reset-all@"):], item))
        elif item.startswith("stall@"):
            at, sep, length = item[len("stall@"):].partition(":")
            if not sep:
                raise UsageError(f"bad --impair item {item!r}: expected stall@START:LENGTH, e.g. stall@8s:2s")
            start, dur = _seconds(at, item), _seconds(length, item)
            if dur <= 0:
                raise UsageError(f"bad --impair item {item!r}: the stall's length must be > 0")
            values["stalls"].append((start, dur))
        elif "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if key.replace("-", "_") in values and key not in ("reset_all_at", "stalls"):
                raise UsageError(f"bad --impair item {item!r}: {key} given twice")
            if key in ("latency", "jitter"):
                values[key] = _seconds(value, item)
            elif key == "bandwidth":
                values[key] = _rate(value, item)
            elif key == "reset-every":
                every, sep, share = value.partition(":")
                values["reset_every"] = _seconds(every, item)
                if values["reset_every"] <= 0:
                    raise UsageError(f"bad --impair item {item!r}: the interval must be > 0")
                values["reset_fraction"] = _fraction(share, item) if sep else 1.0
            else:
                raise UsageError(f"bad --impair item {item!r}: unknown key {key!r} "
                                 "(latency, jitter, bandwidth, reset-every, reset-all@T, stall@T:LEN)")
        else:
            raise UsageError(f"bad --impair item {item!r}: expected key=value, reset-all@T or stall@T:LEN ({_EXAMPLE})")
    if values.get("jitter", 0.0) > 0 and values.get("latency", 0.0) < values["jitter"]:
        raise UsageError(f"bad --impair {spec!r}: jitter must not exceed latency (a chunk cannot leave before it came)")
    return Impairment(latency=values.get("latency", 0.0), jitter=values.get("jitter", 0.0),
                      bandwidth=values.get("bandwidth", 0.0), reset_every=values.get("reset_every", 0.0),
                      reset_fraction=values.get("reset_fraction", 1.0),
                      reset_all_at=tuple(sorted(values["reset_all_at"])), stalls=tuple(sorted(values["stalls"])),
                      spec=spec.strip())


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``host:port`` (or a URL's netloc, default port by scheme); UsageError when malformed."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise UsageError(f"bad {what} {text!r}: expected a URL like http://127.0.0.1:8000")
        try:
            port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        except ValueError:
            raise UsageError(f"bad {what} {text!r}: the port is not a number 0-65535") from None
        return parts.hostname, port
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"bad {what} {text!r}: expected HOST:PORT like 127.0.0.1:9000")
    return host.strip("[]"), int(port_text)


def parse_ready(line: str) -> tuple[str, int] | None:
    """(host, port) from the proxy's READY line; None for any other line."""
    if not line.startswith(READY + " "):
        return None
    host, _, port = line[len(READY) + 1:].strip().rpartition(":")
    return host, int(port)


@dataclass
class _Link:
    """One direction of the shared, capped link: when it is free again."""

    free: float = 0.0


@dataclass(eq=False)
class _Conn:
    """One proxied connection: both transports, and the pump tasks to cancel on a reset."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        """RST both ends: SO_LINGER 0, then close without flushing."""
        for w in (self.client, self.upstream):
            if w is None:
                continue
            sock = w.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            w.transport.abort()
        for task in self.tasks:
            task.cancel()


class Proxy:
    """Forward ``listen`` → ``target`` with ``imp`` applied; run it with :meth:`serve`."""

    def __init__(self, target: tuple[str, int], imp: Impairment, listen: tuple[str, int] = ("127.0.0.1", 0),
                 rng: random.Random | None = None) -> None:
        self.target, self.imp, self.listen = target, imp, listen
        self.rng = rng or random.Random()
        self.conns: set[_Conn] = set()
        self.stats = {"connections": 0, "resets": 0, "reset_events": 0, "stalls": 0, "upstream_failed": 0,
                      "bytes_up": 0, "bytes_down": 0}
        self._links = {"up": _Link(), "down": _Link()}
        self._t0: float | None = None
        self._timers: list[asyncio.Task[None]] = []
        self._server: asyncio.base_events.Server | None = None

    # -- schedule -----------------------------------------------------------------------

    def _start_clock(self) -> None:
        """The schedule starts with the first client connection."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        for at in self.imp.reset_all_at:
            self._timers.append(asyncio.ensure_future(self._at(at, self.reset, 1.0)))
        if self.imp.reset_every > 0:
            self._timers.append(asyncio.ensure_future(self._every(self.imp.reset_every)))
        for start, _ in self.imp.stalls:
            self._timers.append(asyncio.ensure_future(self._at(start, self._count_stall)))

    async def _at(self, at: float, fn: Any, *args: Any) -> None:
        assert self._t0 is not None
        await asyncio.sleep(max(0.0, self._t0 + at - asyncio.get_running_loop().time()))
        fn(*args)

    async def _every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reset(self.imp.reset_fraction)

    def _count_stall(self) -> None:
        self.stats["stalls"] += 1

    def reset(self, fraction: float = 1.0) -> int:
        """RST ``fraction`` of the open connections (chosen at random); how many."""
        conns = list(self.conns)
        if not conns:
            return 0
        chosen = conns if fraction >= 1.0 else self.rng.sample(conns, max(1, math.ceil(fraction * len(conns))))
        for conn in chosen:
            conn.reset()
            self.conns.discard(conn)
        self.stats["resets"] += len(chosen)
        self.stats["reset_events"] += 1
        return len(chosen)

    def _stalled_until(self, t: float) -> float:
        """End of the stall ``t`` falls in (loop time), or ``t`` when none."""
        if self._t0 is None:
            return t
        for start, length in self.imp.stalls:
            a = self._t0 + start
            if a <= t < a + length:
                return a + length
        return t

    # -- forwarding ---------------------------------------------------------------------

    def _release(self, link: _Link, size: int, after: float) -> float:
        """When a chunk of ``size`` bytes read now may be written: its turn on the capped
        link, plus latency +- jitter, never before the chunk before it (``after``)."""
        now = asyncio.get_running_loop().time()
        sent = now
        if self.imp.bandwidth > 0:
            sent = max(now, link.free) + size * 8.0 / self.imp.bandwidth
            link.free = sent
        delay = self.imp.latency
        if self.imp.jitter > 0:
            delay += self.rng.uniform(-self.imp.jitter, self.imp.jitter)
        return max(after, sent + max(0.0, delay))

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        link, key = self._links[way], "bytes_" + way
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            last = 0.0
            try:
                while chunk := await reader.read(CHUNK):
                    last = self._release(link, len(chunk), last)
                    await queue.put((last, chunk))
            except (ConnectionError, OSError):
                conn.reset()  # a reset on one side is passed on to the other
                self.conns.discard(conn)
                return
            await queue.put(None)

        reading = asyncio.ensure_future(read())
        conn.tasks.append(reading)
        try:
            while (item := await queue.get()) is not None:
                release, chunk = item
                while (t := loop.time()) < release or self._stalled_until(t) > t:
                    await asyncio.sleep(max(release, self._stalled_until(t)) - t)
                writer.write(chunk)
                self.stats[key] += len(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # a half-close passes through
        except (ConnectionError, OSError):
            conn.reset()
            self.conns.discard(conn)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._t0 is None:
            self._start_clock()
        self.stats["connections"] += 1
        conn = _Conn(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10.0)
        except (OSError, asyncio.TimeoutError):
            self.stats["upstream_failed"] += 1
            conn.reset()  # the client sees what it would see from a dead server: a reset
            return
        conn.upstream = up_writer
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conns.add(conn)
        up = asyncio.ensure_future(self._pump(conn, reader, up_writer, "up"))
        down = asyncio.ensure_future(self._pump(conn, up_reader, writer, "down"))
        conn.tasks += [up, down]
        try:
            await asyncio.gather(up, down)
        except asyncio.CancelledError:
            pass
        finally:
            self.conns.discard(conn)
            for w in (writer, up_writer):
                w.close()

    async def start(self) -> tuple[str, int]:
        """Listen; the address actually bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, *self.listen, reuse_address=True)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        """Stop listening, drop every connection, cancel the schedule."""
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.reset()
        self.conns.clear()


async def _serve(target: tuple[str, int], imp: Impairment, listen: tuple[str, int], exit_on_eof: bool) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if exit_on_eof:
        # the parent holds our stdin's write end: when it exits, however it dies, we see EOF
        def wait_eof() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_eof, daemon=True).start()
    proxy = Proxy(target, imp, listen)
    try:
        host, port = await proxy.start()
    except OSError as exc:
        raise UsageError(f"proxy cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}") from None
    print(f"{READY} {host}:{port}", flush=True)
    print(f"roombench proxy: {host}:{port} -> {target[0]}:{target[1]}, impair {imp.spec or 'nothing'} "
          "(the schedule starts with the first connection; Ctrl-C stops)", file=sys.stderr, flush=True)
    await stop.wait()
    await proxy.stop()
    return proxy.stats


def serve(listen: str, to: str, spec: str, exit_on_eof: bool = False) -> int:
    """Run the proxy in the foreground until SIGINT/SIGTERM (or stdin's EOF); exit code."""
    imp = parse_spec(spec) if spec else Impairment()
    target = parse_address(to, "--to")
    stats = asyncio.run(_serve(target, imp, parse_address(listen, "--listen"), exit_on_eof))
    print(f"{STATS} {json.dumps(stats, sort_keys=True)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m roombench.servers.proxy --listen H:P --to URL --impair SPEC``."""
    p = argparse.ArgumentParser(prog="roombench proxy")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--to", required=True)
    p.add_argument("--impair", default="")
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    args = p.parse_args(argv)
    try:
        return serve(args.listen, args.to, args.impair, args.exit_on_stdin_eof)
    except UsageError as exc:
        print(f"roombench proxy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
