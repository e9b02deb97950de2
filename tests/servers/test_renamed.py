"""The REST routing py-renamed and py-foreign share (servers.renamed.ProfileRest): /healthz
from the reference app, the profile's backfill URL to each server's own answer, 404 else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from roombench.servers import ServerProcess, start_server

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(60)

#: variant -> (its profile's backfill URL for room "r1", the auth header it wants, the list's key path)
BACKFILL = {
    "py-renamed": ("/api/rooms/r1/history?since=0&max=10", {"Authorization": f"Bearer {REF_TOKEN}"}, ("messages",)),
    "py-foreign": ("/api/v2/rooms/r1/messages?limit=10", {"X-Access-Token": REF_TOKEN}, ("data", "items")),
}


@pytest.fixture(scope="module", params=sorted(BACKFILL))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProcess]]:
    with start_server(request.param, token=REF_TOKEN) as srv:
        yield request.param, srv


def test_healthz_is_the_reference_apps(server: tuple[str, ServerProcess]) -> None:
    _variant, srv = server
    ok = requests.get(srv.url + "/healthz", timeout=5)
    assert (ok.status_code, ok.text) == (200, "ok")
    assert requests.post(srv.url + "/healthz", timeout=5).status_code == 405


@pytest.mark.parametrize("path", ["/nowhere", "/channels/r1/messages", "/api/rooms/r1", "/healthz/x"])
def test_anything_but_healthz_and_the_profiles_url_is_404(server: tuple[str, ServerProcess], path: str) -> None:
    # /channels/{id}/messages is the reference server's URL, not these servers' profiles'
    _variant, srv = server
    res = requests.get(srv.url + path, timeout=5)
    assert (res.status_code, res.json()) == (404, {"error": "not found"})


def test_the_profiles_backfill_url_answers_in_its_shape(server: tuple[str, ServerProcess]) -> None:
    variant, srv = server
    path, auth, key = BACKFILL[variant]
    assert requests.get(srv.url + path, timeout=5).status_code == 401  # the token is still asked for
    res = requests.get(srv.url + path, headers=auth, timeout=5)
    assert res.status_code == 200, res.text
    body = res.json()
    for k in key:
        body = body[k]
    assert body == []  # nobody wrote to r1: an empty page, in the profile's wrapping
