"""https:// and wss:// servers: the lean transport and the REST backfill through TLS.

A TLS-terminating proxy (gevent's StreamServer with the self-signed certificate in
tests/data/tls) forwards to the reference server; the generator trusts the certificate
through SSL_CERT_FILE, as a user with a private CA would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from roombench.exceptions import ConnectFailed
from roombench.generator import Generator, run_for

from tests.test_generator import FAST

pytestmark = pytest.mark.timeout(60)

TLS = Path(__file__).parent.parent / "data" / "tls"


def _pump(src: Any, dst: Any) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(gsocket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def tls_url(ref_server: Any) -> Iterator[str]:
    """https://127.0.0.1:PORT, a TLS proxy in front of the reference server."""
    upstream = ("127.0.0.1", ref_server.port)

    def handle(client: Any, _addr: Any) -> None:
        try:
            server = gsocket.create_connection(upstream)
        except OSError:
            client.close()
            return
        back = gevent.spawn(_pump, server, client)
        _pump(client, server)
        back.join(timeout=5)
        server.close()
        client.close()

    proxy = StreamServer(("127.0.0.1", 0), handle, certfile=str(TLS / "cert.pem"), keyfile=str(TLS / "key.pem"))
    proxy.start()
    try:
        yield f"https://127.0.0.1:{proxy.server_port}"
    finally:
        proxy.stop(timeout=2)


def test_lean_over_tls_with_drops_and_backfill(tls_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "cert.pem"))
    crashed: list[str] = []  # greenlets that died of an exception (gevent prints a traceback)
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "print_exception", lambda context, t, v, tb: crashed.append(f"{context}: {t.__name__}: {v}"))
    report = run_for(Generator(tls_url, replace(FAST, drop_every=0.6)), 4, 3.0)
    c = report["ledger"]
    assert [x for x in crashed if "StreamServer" not in x] == []  # the proxy's own are not ours
    assert report["errors"] == {}
    assert c["sent"] > 20 and c["acked"] == c["sent"] - c["voided"]
    assert report["counters"]["forced_drops"] >= 2
    assert c["lost"] == 0 and c["duplicates"] == 0
    assert c["recovered"] > 0  # fetched over https from the last id held at the drop
    assert c["delivered_live"] + c["recovered"] == c["expected"]


def test_untrusted_certificate_is_one_clear_connect_error(tls_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    from roombench.transport.socketio import LeanTransport
    from roombench.wire.profile import DEFAULT_PROFILE
    from roombench.transport.base import Callbacks

    def nothing(*_: Any) -> None:
        pass

    t = LeanTransport(tls_url, DEFAULT_PROFILE, Callbacks(nothing, nothing, nothing, nothing), token="secret",
                      connect_timeout=5)
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        t.connect()
