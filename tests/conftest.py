"""Shared fixtures. Tests run gevent-patched, as Locust (and so the generator) does."""

from gevent import monkey

monkey.patch_all()

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from roombench.servers import ServerProcess, start_server  # noqa: E402

REF_TOKEN = "secret"


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
