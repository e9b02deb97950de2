"""A redis-server on a free loopback port for the scale-out variants (py-redis, node-redis)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from roombench.exceptions import ServerError
from roombench.servers.process import _LOG_TAIL_BYTES, READY_TIMEOUT, _popen, _tail, free_port


def start_redis(log_path: str, started: list[subprocess.Popen]) -> str:
    """Start a private, memory-only redis-server on a free loopback port; its URL once it
    answers PING. The process is appended to ``started`` at once, for the caller to stop."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServerError(
            "redis-server is not on PATH; install it (Debian/Ubuntu: apt-get install -y redis-server)"
        )
    port = free_port("127.0.0.1")
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", tempfile.gettempdir(), "--loglevel", "warning"]
    proc = _popen(argv, log_path)
    started.append(proc)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _redis_pong(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            state = "did not answer PING" if proc.poll() is None else f"exited with code {proc.returncode}"
            tail = _tail(log_path, _LOG_TAIL_BYTES)
            raise ServerError(f"redis-server on port {port} {state}; log tail:\n{tail}")
        time.sleep(0.02)
    return f"redis://127.0.0.1:{port}/0"


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")  # an inline command: no RESP framing needed
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
