"""Shared fixtures. Tests run gevent-patched, as Locust (and so the generator) does."""

from gevent import monkey

monkey.patch_all()

from collections.abc import Callable, Iterator  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

from roombench.wire.profile import DEFAULT_PROFILE, Profile  # noqa: E402
from roombench.servers import ServerProcess, start_server  # noqa: E402
from roombench.servers.proxy import parse_ready  # noqa: E402
from roombench.transport.base import Transport  # noqa: E402
from roombench.transport.registry import make_transport  # noqa: E402

pytest.register_assert_rewrite("tests.helpers")  # its shared checks fail with pytest's detail

from tests.helpers import REF_TOKEN, Peer, Recorder, ScriptedPeer, new_room  # noqa: E402

__all__ = ["REF_TOKEN"]  # test modules import it from here


@pytest.fixture(scope="session")
def ref_server() -> Iterator[ServerProcess]:
    """The reference server ("py") on a free loopback port, token "secret", for the session."""
    with start_server("py", token=REF_TOKEN) as server:
        yield server


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers: ``server_factory(variant="py", **start_server_kwargs)``.

    Every server started through it is stopped at teardown.
    """
    started: list[ServerProcess] = []

    def start(variant: str = "py", **kwargs: object) -> ServerProcess:
        server = start_server(variant, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def room() -> str:
    """A channel name no other test uses."""
    return new_room()


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., Peer]]:
    """Connect python-socketio peers: ``peer_factory(url, user_id=None, token=REF_TOKEN)``.

    Every peer made through it is disconnected at teardown.
    """
    made: list[Peer] = []

    def make(url: str, user_id: str | None = None, token: str = REF_TOKEN) -> Peer:
        made.append(Peer(url, user_id, token))
        return made[-1]

    yield make
    for peer in made:
        peer.client.disconnect()


@pytest.fixture
def transports() -> Iterator[Callable[..., tuple[Transport, Recorder]]]:
    """Build roombench transports with a Recorder for handlers:
    ``transports(url, kind=..., token=REF_TOKEN, profile=DEFAULT_PROFILE, **make_transport_kwargs)``.

    Every transport built through it is closed at teardown.
    """
    made: list[Transport] = []

    def build(url: str, *, kind: str, token: str | None = REF_TOKEN, profile: Profile = DEFAULT_PROFILE,
              **kwargs: Any) -> tuple[Transport, Recorder]:
        recorder = Recorder()
        transport = make_transport(kind, url, profile, recorder.handlers, token=token, **kwargs)
        made.append(transport)
        return transport, recorder

    yield build
    for transport in made:
        transport.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., str]]:
    """scripted(script) -> URL of a server running ``script(peer, n)`` for the n-th connection."""
    servers: list[StreamServer] = []

    def start(script: Callable[[ScriptedPeer, int], None]) -> str:
        count = [0]

        def handle(sock: Any, _addr: Any) -> None:
            n, count[0] = count[0], count[0] + 1
            peer = ScriptedPeer(sock)
            try:
                peer.handshake()
                script(peer, n)
            except (OSError, ConnectionError):
                pass

        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.stop(timeout=1)


@pytest.fixture
def proxy() -> Iterator[Callable[[str, str], tuple[str, subprocess.Popen[str]]]]:
    """proxy(target_url, spec) -> (proxied URL, process); stopped (stdin closed) at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(target: str, spec: str) -> tuple[str, subprocess.Popen[str]]:
        proc = subprocess.Popen([sys.executable, "-m", "roombench.servers.proxy", "--to", target, "--impair", spec,
                                 "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        started.append(proc)
        assert proc.stdout is not None
        where = parse_ready(proc.stdout.readline())
        assert where is not None
        return f"http://{where[0]}:{where[1]}", proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.communicate(timeout=5)
