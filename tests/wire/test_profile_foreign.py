"""Issue 9: profile keys for foreign servers (auth placement, opaque ids, backfill shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roombench.exceptions import UsageError
from roombench.transport.handshake import socketio_endpoint
from roombench.transport.plainws import plain_endpoint
from roombench.wire.profile import DEFAULT_PROFILE, Profile, load_profile

pytestmark = pytest.mark.timeout(10)


def _load(tmp_path: Path, text: str) -> Profile:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return load_profile(path)


def test_foreign_example_reads_every_new_key() -> None:
    p = load_profile("foreign-example")
    assert (p.id_order, p.ts_unit, p.token_in) == ("opaque", "ms", "auth")
    assert (p.backfill_key, p.backfill_next) == ("data.items", "next")
    assert p.backfill_credentials("T") == ({"X-Access-Token": "T"}, {})
    assert p.is_id("m-1") and p.is_id(3) and not p.is_id(True) and not p.is_id("") and p.no_id == ""


def test_defaults_keep_bearer_and_int_ids() -> None:
    p = DEFAULT_PROFILE
    assert p.backfill_credentials("T") == ({"Authorization": "Bearer T"}, {})
    assert p.backfill_credentials(None) == ({}, {})
    assert not p.is_id("m-1") and p.no_id == 0
    assert p.socket_token("T") == ("token", "T")
    assert Profile(token_in="header").socket_token("T") == ("Authorization", "Bearer T")


def test_backfill_auth_in_the_query_none_and_static_headers(tmp_path: Path) -> None:
    q = _load(tmp_path, '[backfill]\nauth = "query"\nauth_name = "access_token"\nauth_value = "{token}"\n'
                        'headers = {"X-Client" = "roombench"}\n')
    assert q.backfill_credentials("T") == ({"X-Client": "roombench"}, {"access_token": "T"})
    none = _load(tmp_path, '[backfill]\nauth = "none"\n')
    assert none.backfill_credentials("T") == ({}, {})


def test_socket_token_name_and_value_templates(tmp_path: Path) -> None:
    header = _load(tmp_path, 'token_in = "header"\ntoken_name = "X-Access-Token"\ntoken_value = "{token}"\n')
    ep = socketio_endpoint("http://h:1", header, "T", {})
    assert ep.headers == {"X-Access-Token": "T"} and ep.auth is None
    assert plain_endpoint("http://h:1", header, "T", {}).headers == {"X-Access-Token": "T"}
    query = _load(tmp_path, 'token_in = "query"\ntoken_name = "access_token"\n')
    assert "&access_token=T" in socketio_endpoint("http://h:1", query, "T", {}).ws_url
    assert "access_token=T" in plain_endpoint("http://h:1", query, "T", {}).ws_url


@pytest.mark.parametrize("text,needle", [
    ('id_order = "uuid"\n', "id_order must be one of int, opaque"),
    ('ts_unit = "us"\n', "ts_unit must be one of s, ms"),
    ('[backfill]\nauth = "cookie"\n', "auth must be one of header, query, none"),
    ('[backfill]\nheaders = {"X" = 1}\n', "backfill.headers.X must be a string"),
    ('[backfill]\nurl = "/m/{channel_id}?after={after}&c={page}"\n', "allowed: {channel_id}, {after}, {limit}, {cursor}"),
])
def test_bad_new_keys_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        _load(tmp_path, text)
    assert needle in str(info.value)
