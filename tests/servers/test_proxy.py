"""The impairment proxy (servers/proxy.py): SPEC parsing, and what it does to real traffic
on loopback — an echo server for exact timings, the reference server under the generator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from roombench.chat.scenario import Scenario
from roombench.exceptions import UsageError
from roombench.generator import Generator, run_for
from roombench.measure.metrics import Metrics
from roombench.servers.proxy import Impairment, parse_ready, parse_spec

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- SPEC


def test_a_full_spec_parses() -> None:
    imp = parse_spec("latency=50ms,jitter=10ms,bandwidth=1mbit,reset-every=10s:25%,reset-all@5s,stall@8s:2s,reset-all@1.5s")
    assert imp == Impairment(latency=0.05, jitter=0.01, bandwidth=1e6, reset_every=10.0, reset_fraction=0.25,
                             reset_all_at=(1.5, 5.0), stalls=((8.0, 2.0),), spec=imp.spec)
    assert parse_spec("reset-every=2s").reset_fraction == 1.0


@pytest.mark.parametrize("spec,needle", [
    ("latency=50", "not a time"),
    ("latency=50ms,,", "empty item"),
    ("", "empty item"),
    ("lag=5ms", "unknown key 'lag'"),
    ("stall@8s", "stall@START:LENGTH"),
    ("stall@8s:0s", "must be > 0"),
    ("bandwidth=fast", "not a rate"),
    ("reset-every=0s", "must be > 0"),
    ("reset-every=5s:0%", "not a share"),
    ("jitter=10ms", "jitter must not exceed latency"),
    ("latency=5ms,latency=6ms", "given twice"),
    ("reset-all", "expected key=value"),
])
def test_a_bad_spec_names_the_item(spec: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_spec(spec)


def _roombench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("verb", [["proxy", "--to", "http://127.0.0.1:1"], ["run", "--duration", "2"]])
def test_a_bad_spec_is_one_line_and_exit_2(verb: list[str]) -> None:
    res = _roombench(*verb, "--impair", "latency=fast")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["roombench: error: bad --impair item 'latency=fast': 'fast' is not "
                                               "a time like 50ms, 2s or 1.5m"]


# ---------------------------------------------------------------------- the proxy process


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A plain TCP echo server on loopback (threads: this test process is gevent-patched,
    so they are greenlets; the proxy runs in its own process)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _connect(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _echo_time(sock: socket.socket, size: int) -> float:
    t = time.perf_counter()
    sock.sendall(b"x" * size)
    got = 0
    while got < size:
        got += len(sock.recv(65536))
    return time.perf_counter() - t


def test_latency_adds_both_ways_and_keeps_byte_order(proxy: Any, echo_port: int) -> None:
    url, _ = proxy(f"http://127.0.0.1:{echo_port}", "latency=40ms,jitter=20ms")
    with _connect(url) as sock:
        rtts = [_echo_time(sock, 10) for _ in range(5)]
        # jitter on every chunk, yet the bytes come back in the order sent
        payload = b"".join(i.to_bytes(4, "big") for i in range(20000))
        for i in range(0, len(payload), 800):
            sock.sendall(payload[i:i + 800])
        back = b""
        while len(back) < len(payload):
            back += sock.recv(65536)
    assert all(0.035 <= r < 0.25 for r in rtts), rtts  # 2 x (40 +- 20) ms
    assert back == payload


def test_bandwidth_caps_a_bulk_transfer(proxy: Any, echo_port: int) -> None:
    url, _ = proxy(f"http://127.0.0.1:{echo_port}", "bandwidth=2mbit")
    with _connect(url) as sock:
        took = _echo_time(sock, 100_000)  # 0.4 s each way at 2 Mbit/s, overlapping
    assert 0.38 < took < 2.0, took


def test_stall_holds_data_and_loses_none(proxy: Any, echo_port: int) -> None:
    url, _ = proxy(f"http://127.0.0.1:{echo_port}", "stall@0.3s:0.8s")
    with _connect(url) as sock:  # the schedule starts with this connection
        assert _echo_time(sock, 10) < 0.2
        time.sleep(0.4)
        took = _echo_time(sock, 10)  # sent 0.4 s in: held until 1.1 s
    assert 0.55 < took < 1.5, took


def test_reset_all_sends_a_tcp_reset(proxy: Any, echo_port: int) -> None:
    url, proc = proxy(f"http://127.0.0.1:{echo_port}", "reset-all@0.3s")
    with _connect(url) as sock:
        assert _echo_time(sock, 10) < 0.2
        with pytest.raises(ConnectionResetError):
            sock.settimeout(3)
            sock.recv(10)  # RST at 0.3 s: not a clean EOF (which would return b"")


def test_the_proxy_exits_when_its_stdin_closes(proxy: Any, echo_port: int) -> None:
    _, proc = proxy(f"http://127.0.0.1:{echo_port}", "latency=1ms")
    out, _ = proc.communicate(timeout=5)  # what `roombench run` does; and what its death does
    assert proc.returncode == 0
    assert '"connections": 0' in out


# ---------------------------------------------------------------------- under the generator

FAST = Scenario(token=REF_TOKEN, rate=10.0, room_size=3, reconnect_delay=0.2, reconnect_delay_max=0.5, drain=3.0,
                ack_timeout=3.0)


def _ack_p50_ms(report: dict[str, Any]) -> float:
    return float(Metrics.decode(report["metrics"]).summary()["ack"]["p50"])


def test_latency_50ms_raises_the_ack_p50_by_about_100ms(ref_server: Any, proxy: Any) -> None:
    url, _ = proxy(ref_server.url, "latency=50ms")
    direct = run_for(Generator(ref_server.url, FAST), 3, 2.0)
    impaired = run_for(Generator(url, FAST), 3, 2.0)
    added = _ack_p50_ms(impaired) - _ack_p50_ms(direct)
    assert 90 <= added <= 150, (added, _ack_p50_ms(direct))  # 2 x 50 ms, plus the proxy's own wake-ups
    assert impaired["ledger"]["lost"] == 0 and impaired["errors"] == {}


def test_reset_all_drops_every_user_at_once_and_nothing_is_lost(ref_server: Any, proxy: Any) -> None:
    url, proc = proxy(ref_server.url, "reset-all@1s")
    users = 6
    started = time.monotonic()
    report = run_for(Generator(url, replace(FAST, room_size=3)), users, 3.0)
    took = time.monotonic() - started
    assert report["errors"].get("disconnected") == users  # every user, once
    c = report["ledger"]
    assert c["lost"] == 0 and c["delivered_live"] + c["recovered"] == c["expected"] > 0
    assert took < 3.0 + 5.0, took  # connect + 3 s + drain, not stretched by the reset
    out, _ = proc.communicate(timeout=5)
    assert '"reset_events": 1' in out


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_the_proxy_of_a_run_dies_with_it_even_on_sigkill(tmp_path: Path) -> None:
    run = subprocess.Popen([sys.executable, "-m", "roombench.cli", "run", "--users", "2", "--duration", "30",
                            "--impair", "latency=1ms", "--out", str(tmp_path), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    others: list[int] = []
    try:
        deadline = time.monotonic() + 30
        proxies: list[int] = []
        locust: list[int] = []
        while not (proxies and locust) and time.monotonic() < deadline:  # the proxy starts before Locust
            time.sleep(0.2)
            proxies = [p for p in _children(run.pid) if "roombench.servers.proxy" in _cmdline(p)]
            locust = [p for p in _children(run.pid) if "-m locust" in _cmdline(p)]
        assert proxies, "the run started no proxy"
        others = [p for p in _children(run.pid) if p not in proxies]  # server, Locust: not this test's subject
        run.kill()
        run.wait(5)
        deadline = time.monotonic() + 5
        while _alive(proxies[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(proxies[0]), "the proxy outlived its run"
    finally:
        run.kill()
        run.wait(5)
        for pid in others:  # stop what the killed run left, by pid (process groups are not this test's)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_roombench_proxy_runs_standalone_until_ctrl_c(echo_port: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "roombench.cli", "proxy", "--to", f"http://127.0.0.1:{echo_port}",
                             "--impair", "latency=30ms"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        where = parse_ready(proc.stdout.readline())
        assert where is not None
        with _connect(f"http://{where[0]}:{where[1]}") as sock:
            assert 0.055 < _echo_time(sock, 10) < 0.3
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err
    assert '"connections": 1' in out
