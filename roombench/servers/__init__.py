"""Server variants under test: start one as a subprocess, wait until it is ready, stop it by pid.

Every variant speaks the contract of docs/PROTOCOL.md. A variant is data in :data:`VARIANTS`;
Python variants name an ASGI app factory that ``python -m roombench.servers <name>`` serves
with uvicorn, foreign ones (node, …) will give a ``command`` of their own.

Servers always run in their own process: the generator's gevent loop and the server's asyncio
loop must never share a core's time slice by accident, and a stop must leave nothing behind.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from roombench.exceptions import ServerError, UsageError

__all__ = ["VARIANTS", "Variant", "ServerProcess", "start_server", "free_port"]

READY_TIMEOUT = 15.0
_LOG_TAIL_BYTES = 2000
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Variant:
    """One way to run a server that speaks the contract.

    ``app_factory`` ("module:function") builds an ASGI app from ``token=`` and ``faults=``;
    ``python -m roombench.servers <name>`` serves it. ``command``, when given, replaces that:
    it gets (host, port, token) and returns the argv of a foreign server.
    """

    name: str
    description: str
    app_factory: str | None = None
    supports_faults: bool = False
    command: Callable[[str, int, str | None], list[str]] | None = None


VARIANTS: dict[str, Variant] = {
    "py": Variant(
        name="py",
        description="python-socketio AsyncServer on uvicorn, one process, in memory",
        app_factory="roombench.servers.reference:create_app",
        supports_faults=True,
    ),
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may still take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running server variant; ``stop()`` (or leaving the ``with`` block) ends it by pid."""

    variant: str
    pid: int
    url: str
    port: int
    log_path: str
    _proc: subprocess.Popen = field(repr=False)
    _own_log: bool = field(default=False, repr=False)

    @property
    def running(self) -> bool:
        """True while the server process has not exited."""
        return self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server, SIGKILL it if it is still there after ``timeout`` s; idempotent."""
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        _live.pop(self.pid, None)
        if self._own_log:
            Path(self.log_path).unlink(missing_ok=True)
            self._own_log = False

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the server's stdout+stderr."""
        return _tail(self.log_path, max_bytes)

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # exited between poll() and kill()
            pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: servers started by this process and not yet stopped, so interpreter exit can stop them
_live: dict[int, ServerProcess] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live.values()):
        server.stop(timeout=2.0)


def start_server(
    variant: str,
    *,
    port: int = 0,
    token: str | None = None,
    faults: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    log_path: str | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> ServerProcess:
    """Start ``variant`` as a subprocess and return it once ``GET /healthz`` answers 200.

    ``port=0`` picks a free port (retrying if another process grabs it first). ``faults``
    holds :class:`roombench.servers.reference.Faults` fields, e.g. ``{"drop_live_every": 2}``.
    The server's stdout and stderr go to ``log_path`` (a temporary file when None, removed
    on stop). Raises :class:`UsageError` for an unknown variant or fault and
    :class:`ServerError` when the server exits or is not ready within ``ready_timeout`` s.
    """
    spec = VARIANTS.get(variant)
    if spec is None:
        known = ", ".join(sorted(VARIANTS))
        raise UsageError(f"unknown server variant {variant!r}; known: {known}")
    extra = _fault_args(spec, faults or {})
    attempts = _PORT_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        chosen = port or free_port(host)
        server = _spawn(spec, host, chosen, token, extra, log_path)
        try:
            _wait_ready(server, ready_timeout)
            return server
        except ServerError:
            taken = "address already in use" in server.log_tail().lower()
            server.stop()
            if not (taken and attempt < attempts):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _fault_args(spec: Variant, faults: dict[str, Any]) -> list[str]:
    if not faults:
        return []
    if not spec.supports_faults:
        raise UsageError(f"server variant {spec.name!r} does not support faults")
    from roombench.servers.reference import Faults  # server-side module: import only when asked

    try:
        parsed = Faults(**faults)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad faults {faults!r}: {exc}") from None
    return ["--faults", json.dumps(asdict(parsed))]


def _argv(spec: Variant, host: str, port: int, token: str | None, extra: list[str]) -> list[str]:
    if spec.command is not None:
        return spec.command(host, port, token)
    argv = [sys.executable, "-m", "roombench.servers", spec.name]
    argv += ["--host", host, "--port", str(port)]
    if token is not None:
        argv += ["--token", token]
    return argv + extra


def _spawn(
    spec: Variant, host: str, port: int, token: str | None, extra: list[str], log_path: str | None
) -> ServerProcess:
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix=f"roombench-{spec.name}-", suffix=".log")
        os.close(fd)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            _argv(spec, host, port, token, extra),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = _base_url(host, port)
    server = ServerProcess(spec.name, proc.pid, url, port, log_path, proc, own_log)
    _live[proc.pid] = server
    return server


def _base_url(host: str, port: int) -> str:
    # a wildcard bind is reached over loopback; IPv6 literals need brackets in a URL
    connect_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in connect_host:
        connect_host = f"[{connect_host}]"
    return f"http://{connect_host}:{port}"


# loopback probes must never go through an HTTP proxy from the environment
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_ready(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not server.running:
            raise ServerError(
                f"server variant {server.variant!r} exited with code {server._proc.returncode} "
                f"before it was ready on {server.url}; log tail:\n{server.log_tail()}"
            )
        if _healthy(server.url):
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"server variant {server.variant!r} did not answer GET {server.url}/healthz "
                f"with 200 within {timeout:g} s; log tail:\n{server.log_tail()}"
            )
        time.sleep(0.05)


def _healthy(url: str) -> bool:
    try:
        with _opener.open(url + "/healthz", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: str, max_bytes: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - max_bytes))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
