"""Server processes: start a variant, wait until it is ready, stop it (and all it started) by pid."""

from __future__ import annotations

import atexit
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roombench.exceptions import ServerError, UsageError

from roombench.servers.variants import SERVER_TOKEN_ENV, VARIANTS, Variant

READY_TIMEOUT = 15.0
_LOG_TAIL_BYTES = 2000
_PORT_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may still take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running server variant; ``stop()`` (or leaving the ``with`` block) ends it by pid.

    A variant of several processes is still one ServerProcess: ``url`` is the comma-joined
    base URLs of all of them (what the generator's ``host`` takes), ``pid`` and ``port`` are
    the first one's, ``pids`` lists every process it started, backing services (redis-server,
    whose URL is ``redis_url``) last.
    """

    variant: str
    pid: int
    url: str
    port: int
    log_path: str
    _proc: subprocess.Popen = field(repr=False)
    _own_log: bool = field(default=False, repr=False)
    #: the other server processes, and the backing services they need (stopped after them)
    _more: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _services: list[subprocess.Popen] = field(default_factory=list, repr=False)
    redis_url: str | None = None
    #: argv of every server process (same order as _proc, *_more) and its token: what restart() reruns
    _argvs: list[list[str]] = field(default_factory=list, repr=False)
    _token: str | None = field(default=None, repr=False)

    @property
    def urls(self) -> list[str]:
        """The base URL of every server process."""
        return self.url.split(",")

    @property
    def pids(self) -> list[int]:
        """Every process this server started: server processes first, backing services last."""
        return [proc.pid for proc in self._procs()]

    @property
    def running(self) -> bool:
        """True while every process of the server is alive."""
        return all(proc.poll() is None for proc in self._procs())

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server process groups, SIGKILL what is still there after ``timeout`` s,
        then the same for backing services; idempotent. A paused server is resumed first."""
        _terminate([self._proc, *self._more], timeout)
        _terminate(self._services, timeout)
        _live.pop(id(self), None)
        if self._own_log:
            Path(self.log_path).unlink(missing_ok=True)
            self._own_log = False

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the server's stdout+stderr."""
        return _tail(self.log_path, max_bytes)

    def _procs(self) -> list[subprocess.Popen]:
        return [self._proc, *self._more, *self._services]

    def _app(self) -> list[subprocess.Popen]:
        return [self._proc, *self._more]

    # --- faults on purpose (bench.chaos): the app server processes only, backing services stay up

    def kill(self) -> None:
        """SIGKILL every server process group (not redis-server) and reap them."""
        for proc in self._app():
            if proc.returncode is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                _watchdog_forget(proc.pid)

    def restart(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start again every server process that is not running, on its own port, with the
        same argv and token; returns once all answer ``GET /healthz``. Raises ServerError."""
        if not self._argvs:
            raise ServerError(f"server variant {self.variant!r} cannot be restarted")
        procs = self._app()
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                procs[i] = _popen(self._argvs[i], self.log_path, self._token)
        self._proc, self._more = procs[0], procs[1:]
        self.pid = self._proc.pid
        _wait_ready(self, ready_timeout)

    def pause(self) -> None:
        """SIGSTOP every server process group: sockets stay open, nothing is answered."""
        for proc in self._app():
            if proc.returncode is None:
                _signal_group(proc, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT every server process group."""
        for proc in self._app():
            if proc.returncode is None:
                _signal_group(proc, signal.SIGCONT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: servers started by this process and not yet stopped (by id()), so interpreter exit can stop them
_live: dict[int, ServerProcess] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live.values()):
        server.stop(timeout=2.0)


# --- process groups and the watchdog -------------------------------------------------------
#
# Every child we start leads its own process group (start_new_session): a stop signals the
# group, so grandchildren (node's helpers, a `command = "sh -c ..."` variant's server, Locust's
# --processes workers, which it forks) go with it, and a Ctrl-C in the terminal reaches only
# roombench, which then stops its children in order.
#
# Dying with the parent, even on SIGKILL: PR_SET_PDEATHSIG covers only a direct child, and it
# fires when the *thread* that forked the child exits (the chaos thread restarts servers), so it
# is not used. A subreaper would collect orphans but dies with us too. Instead one watchdog
# process per roombench process (below, started on first use, in a session of its own) reads
# "+PGID" / "-PGID" lines from a pipe whose write end only we hold; when the pipe closes (we
# exited, however) it sends SIGTERM + SIGCONT to every group still registered, then SIGKILL
# to what is left after 2 s, and exits. Limit: a grandchild that calls setsid() itself
# leaves the group and is not covered.

_WATCHDOG = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin.buffer:
    try:
        (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    except ValueError:
        pass
def send(sig):
    alive = set()
    for g in groups:
        try:
            os.killpg(g, sig)
            alive.add(g)
        except OSError:
            pass
    return alive
send(signal.SIGTERM)
send(signal.SIGCONT)
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline and send(0):
    time.sleep(0.05)
send(signal.SIGKILL)
"""

_watchdog: subprocess.Popen | None = None
_watchdog_lock = threading.Lock()


def _watchdog_send(line: str) -> None:
    global _watchdog
    with _watchdog_lock:
        if _watchdog is None or _watchdog.poll() is not None:
            # -I -S: no site, no env: a few ms to start; stdout to /dev/null, it says nothing
            _watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, start_new_session=True)
        assert _watchdog.stdin is not None
        try:
            _watchdog.stdin.write(line.encode() + b"\n")
            _watchdog.stdin.flush()
        except OSError:  # the watchdog died (someone killed it): the next call starts another
            pass


def _watchdog_forget(pgid: int) -> None:
    if _watchdog is not None:
        _watchdog_send(f"-{pgid}")


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog, if started (tests check it goes too)."""
    return _watchdog.pid if _watchdog is not None else None


def spawn_group(argv: list[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` as the leader of a new process group that the
    watchdog kills if this process dies; stop it with :func:`stop_group`."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen)
    _watchdog_send(f"+{proc.pid}")
    return proc


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group ``proc`` leads, SIGKILL it after ``timeout`` s."""
    _terminate([proc], timeout)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except OSError:  # the group is gone already
        pass


def exited(proc: subprocess.Popen) -> bool:
    """True once the leader has exited, without reaping it: while it is a zombie its pid (= the
    group id) cannot be reused, so a SIGKILL to the group hits only what it left behind."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _terminate(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM (and SIGCONT, for a paused one) the groups of all of ``procs`` at once; once a
    leader exits, or after ``timeout`` s, SIGKILL its group (grandchildren that outlived it)
    and reap it."""
    live = [proc for proc in procs if proc.returncode is None]
    for proc in live:
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
    deadline = time.monotonic() + timeout
    while live:
        for proc in [p for p in live if exited(p) or time.monotonic() > deadline]:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            _watchdog_forget(proc.pid)
            live.remove(proc)
        if live:
            time.sleep(0.02)


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

    ``port=0`` picks free ports (retrying if another process grabs one first); a variant of
    N processes given ``port=P`` uses P … P+N-1. ``faults``
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
    return _start(spec, port, token, extra, host, log_path, ready_timeout)


def start_external(name: str, command: str, *, token: str | None = None, log_path: str | None = None,
                   ready_timeout: float = READY_TIMEOUT) -> ServerProcess:
    """Start a server of the user's own from a command template with ``{host}`` and ``{port}``
    placeholders; ready when ``GET /healthz`` answers 200. The token is never on its command
    line (visible to every local user in ps): the server reads it from $ROOMBENCH_SERVER_TOKEN,
    and ``{token}`` in ``command`` is refused (UsageError)."""
    check_command(name, command)

    def argv(host: str, port: int, tok: str | None) -> list[str]:
        try:
            return shlex.split(command.format(host=host, port=port))
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"bad command for variant {name!r}: {command!r} ({exc})") from None

    spec = Variant(name=name, description=f"external: {command}", command=argv)
    return _start(spec, 0, token, [], "127.0.0.1", log_path, ready_timeout)


def check_command(name: str, command: str) -> None:
    """UsageError unless ``command`` is a template of ``{host}`` and ``{port}`` only."""
    import string

    try:
        keys = {key for _, key, _, _ in string.Formatter().parse(command) if key is not None}
    except ValueError as exc:
        raise UsageError(f"bad command for variant {name!r}: {command!r} ({exc})") from None
    if "token" in keys:
        raise UsageError(f"command of variant {name!r} has {{token}}: a command line is visible to every local "
                         f"user; the server gets the token in ${SERVER_TOKEN_ENV} instead")
    unknown = keys - {"host", "port"}
    if unknown:
        raise UsageError(f"bad command for variant {name!r}: unknown placeholder {{{sorted(unknown)[0]}}} "
                         "(known: {host}, {port})")


def _start(spec: Variant, port: int, token: str | None, extra: list[str], host: str, log_path: str | None,
           ready_timeout: float) -> ServerProcess:
    attempts = _PORT_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        server = None
        try:
            server = _spawn(spec, host, port, token, extra, log_path)
            _wait_ready(server, ready_timeout)
            return server
        except BaseException as exc:  # Ctrl-C and roombench's Interrupted too: nothing may outlive a failed start
            if server is not None:
                server.stop()
            if not (isinstance(exc, ServerError) and exc.port_taken and attempt < attempts):
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
        return spec.command(host, port, token) + extra  # a foreign server takes --faults JSON too
    argv = [sys.executable, "-m", "roombench.servers", spec.name]
    argv += ["--host", host, "--port", str(port)]  # the token: by environment (_popen)
    return argv + extra


def _spawn(
    spec: Variant, host: str, port: int, token: str | None, extra: list[str], log_path: str | None
) -> ServerProcess:
    """Start every process of ``spec`` (``port=0``: on free ports) and register the result."""
    ports = [port + i for i in range(spec.processes)] if port else _free_ports(host, spec.processes)
    argvs = [_argv(spec, host, p, token, extra) for p in ports]  # first: may raise, no log yet
    own_log = log_path is None
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"roombench-{spec.name}-", suffix=".log")
        os.close(fd)
    started: list[subprocess.Popen] = []
    redis_url = None
    try:
        if spec.redis:
            from roombench.servers.redis import start_redis  # it uses this module's spawning helpers

            redis_url = start_redis(log_path, started)
            argvs = [argv + ["--redis", redis_url] for argv in argvs]
        for argv in argvs:
            started.append(_popen(argv, log_path, token))
    except BaseException:  # Ctrl-C included: nothing may outlive a failed start
        _terminate(started[::-1], 2.0)
        if own_log:
            Path(log_path).unlink(missing_ok=True)
        raise
    services = started[:1] if spec.redis else []
    procs = started[len(services):]
    url = ",".join(_base_url(host, p) for p in ports)
    server = ServerProcess(spec.name, procs[0].pid, url, ports[0], log_path, procs[0], own_log,
                           procs[1:], services, redis_url, argvs, token)
    _live[id(server)] = server
    return server


def _popen(argv: list[str], log_path: str, token: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(SERVER_TOKEN_ENV, None)
    if token is not None:
        env[SERVER_TOKEN_ENV] = token
    with open(log_path, "ab") as log:
        return spawn_group(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


def _free_ports(host: str, n: int) -> list[int]:
    # hold every socket until all are bound, so the n ports differ
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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
    pending = server.urls
    while True:
        dead = next((proc for proc in server._procs() if proc.poll() is not None), None)
        if dead is not None:
            tail = server.log_tail()
            # the one place a foreign process's words are read: its log is all it tells us
            raise ServerError(
                f"server variant {server.variant!r} exited with code {dead.returncode} "
                f"before it was ready on {server.url}; log tail:\n{tail}",
                port_taken="address already in use" in tail.lower(),
            )
        pending = [url for url in pending if not _healthy(url)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"server variant {server.variant!r} did not answer GET {pending[0]}/healthz "
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
