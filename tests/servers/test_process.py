"""Server processes: groups, stop by group, dying with the parent, faults on purpose, the token."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from roombench.exceptions import UsageError
from roombench.servers import start_external, start_server
from roombench.servers.process import watchdog_pid
from roombench.servers.variants import SERVER_TOKEN_ENV

from tests.helpers import REF_TOKEN, need_node
from tests.pids import alive, descendants, wait_for_descendants, wait_gone

pytestmark = pytest.mark.timeout(60)

#: a variant whose server is a grandchild: sh waits on it, so only a group stop reaches it
WRAPPED = f"sh -c '{sys.executable} -m roombench.servers py --host {{host}} --port {{port}} & wait'"


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def test_kill_restart_pause_resume_on_the_same_port() -> None:
    with start_server("py", token=REF_TOKEN) as server:
        url, first = server.url, server.pid
        server.kill()
        assert not server.running and not _up(url)
        server.restart()
        assert server.url == url and server.pid != first and _up(url)
        server.pause()
        assert not _up(url)  # stopped: the socket accepts, nothing answers
        server.resume()
        assert _up(url)
        server.pause()  # a paused server still stops (SIGCONT after SIGTERM)
    assert not alive({server.pid})


def test_py_redis_kill_leaves_redis_up_and_restart_serves_again() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    with start_server("py-redis", token=REF_TOKEN) as server:
        redis_pid = server.pids[-1]
        server.kill()
        assert alive({redis_pid}) == {redis_pid} and not any(_up(u) for u in server.urls)
        server.restart()
        assert all(_up(u) for u in server.urls) and server.pids[-1] == redis_pid
    assert not alive(set(server.pids))


def test_stop_takes_the_grandchildren_of_a_command_variant(tmp_path: Path) -> None:
    server = start_external("wrapped", WRAPPED, token=REF_TOKEN, log_path=str(tmp_path / "log"))
    try:
        below = alive(descendants(server.pid))
        assert below, "the wrapped server is sh's child"
        assert all(os.getpgid(pid) == server.pid for pid in below)  # one group, led by sh
    finally:
        server.stop()
    assert wait_gone(below | {server.pid}, 3.0) == set()


def test_a_command_variant_gets_the_token_by_environment_never_argv(tmp_path: Path) -> None:
    secret = "tok-" + "s3cr3t" * 3
    server = start_external("wrapped", WRAPPED, token=secret, log_path=str(tmp_path / "log"))
    try:
        pids = {server.pid} | alive(descendants(server.pid))
        for pid in pids:
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        py = max(pids)  # the python server (sh's child)
        assert f"{SERVER_TOKEN_ENV}={secret}".encode() in Path(f"/proc/{py}/environ").read_bytes()
        url = server.url + "/channels/general/messages?after=0&limit=1"
        assert requests.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=2).status_code == 200
        assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=2).status_code == 401
    finally:
        server.stop()


@pytest.mark.parametrize("command,needle", [
    ("srv --port {port} --token {token}", SERVER_TOKEN_ENV),
    ("srv --port {port} --key {key}", "unknown placeholder {key}"),
    ("srv --port {port", "bad command"),
])
def test_bad_command_templates_are_usage_errors(command: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        start_external("theirs", command)


def test_children_lead_their_own_groups_and_a_watchdog_is_there() -> None:
    with start_server("py", token=REF_TOKEN) as server:
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
        assert watchdog_pid() is not None and alive({watchdog_pid()})


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("node") is None,
                    reason="needs redis-server and node")
def test_sigkill_of_serve_node_redis_leaves_no_process() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "roombench.cli", "serve", "node-redis", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving at" in line, line
        pids = wait_for_descendants(proc.pid, 3, 5.0)  # redis-server, two node servers (+ the watchdog)
        assert len(pids) >= 3, pids
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_gone(pids, 5.0) == set()


@pytest.mark.parametrize("variant", ["py", "node"])
def test_a_stalled_server_still_queues_a_connect_burst(variant: str) -> None:
    # A server busy for a moment (here: stopped) must not drop a burst of connects in the
    # kernel: with Node's default listen backlog of 511 the 513th SYN was dropped and its
    # client waited a second for the retransmit (TcpExtListenOverflows in genbench's ramps).
    if variant == "node":
        need_node()
    burst = 3_000  # past uvicorn's default 2,048 as well
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < burst + 300:
        pytest.skip(f"needs {burst + 300} open files, the hard limit is {hard}")
    if int(Path("/proc/sys/net/core/somaxconn").read_text()) < burst:
        pytest.skip("net.core.somaxconn caps every listen backlog below the burst")
    if soft != resource.RLIM_INFINITY and soft < burst + 300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (burst + 300, hard))
    with start_server(variant, token=REF_TOKEN) as server:
        server.pause()
        socks = []
        try:
            for _ in range(burst):
                s = socket.socket()
                s.setblocking(False)
                socks.append(s)
                assert s.connect_ex(("127.0.0.1", server.port)) in (0, errno.EINPROGRESS)
            time.sleep(0.5)  # a queued connect completes at once on loopback; a dropped SYN is retried after 1 s
            established = 0
            for s in socks:
                try:
                    s.getpeername()
                    established += 1
                except OSError:
                    pass
        finally:
            server.resume()
            for s in socks:
                s.close()
        assert established == burst
