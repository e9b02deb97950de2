"""A plain HTTP server on the port: the handshake error is one line (status + the body's
first words), from the preflight probe and from the transports' own handshake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent.server import StreamServer

from roombench.exceptions import ConnectFailed
from roombench.transport.probe import preflight

pytestmark = pytest.mark.timeout(30)
PAGE = ("<!DOCTYPE html>\n<html>\n  <head>\n    <title>Error response</title>\n  </head>\n  <body>\n"
        "    <h1>Error response</h1>\n    <p>Error code: 404</p>\n    <p>Message: File not found.</p>\n"
        + "    <p>" + "x" * 300 + "</p>\n  </body>\n</html>\n")


@pytest.fixture
def http_server() -> Iterator[str]:
    """Answers every request with a 13-line HTML 404, as `python -m http.server` does."""
    def handle(sock: Any, _addr: Any) -> None:
        sock.recv(65536)
        body = PAGE.encode()
        sock.sendall(b"HTTP/1.0 404 File not found\r\nContent-Type: text/html\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.stop(timeout=1)


def _one_line(message: str) -> None:
    assert "\n" not in message and "404" in message and "Error response" in message, message
    assert len(message) < 400, message


@pytest.mark.parametrize("transport", ["lean", "ws"])
def test_preflight_error_is_one_line(http_server: str, transport: str) -> None:
    with pytest.raises(ConnectFailed) as exc:
        preflight(http_server, None, transport=transport, timeout=3.0)
    _one_line(str(exc.value))


@pytest.mark.parametrize("kind", ["lean", "ws"])
def test_transport_handshake_error_is_one_line(http_server: str, transports: Any, kind: str) -> None:
    transport, _ = transports(http_server, kind=kind)
    with pytest.raises(ConnectFailed) as exc:
        transport.connect()
    _one_line(str(exc.value))


SECRET = "tok-" + "qu3ry" * 4


@pytest.mark.parametrize("kind", ["lean", "ws"])
def test_a_token_in_the_query_is_redacted_from_handshake_errors(http_server: str, transports: Any,
                                                                 kind: str) -> None:
    from dataclasses import replace

    from roombench.wire.profile import DEFAULT_PROFILE

    profile = replace(DEFAULT_PROFILE, token_in="query")
    with pytest.raises(ConnectFailed) as exc:
        preflight(http_server, SECRET, profile, transport=kind, timeout=3.0)
    assert SECRET not in str(exc.value) and "***" in str(exc.value), exc.value
    transport, _ = transports(http_server, kind=kind, token=SECRET, profile=profile)
    with pytest.raises(ConnectFailed) as exc:
        transport.connect()
    assert SECRET not in str(exc.value) and "***" in str(exc.value), exc.value
