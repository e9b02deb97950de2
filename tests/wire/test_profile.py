"""Profiles: the shipped files, loading and its errors, and a whole run under a foreign profile."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from roombench.exceptions import UsageError
from roombench.wire.profile import (
    DEFAULT_EVENTS,
    DEFAULT_FIELDS,
    DEFAULT_PROFILE,
    PROFILES_DIR,
    Profile,
    ack_follows_profile,
    builtin_profiles,
    load_profile,
)

pytestmark = pytest.mark.timeout(30)


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_default_toml_is_the_contract() -> None:
    profile = load_profile(PROFILES_DIR / "default.toml")
    assert replace(profile, source="") == DEFAULT_PROFILE
    # every key is written out, so the file documents the whole format
    text = (PROFILES_DIR / "default.toml").read_text()
    for key in [*DEFAULT_EVENTS, *DEFAULT_FIELDS, "url", "key", "limit", "ack_mode", "join_ack", "token_in", "path", "ws_path", "namespace"]:
        assert f"\n{key} = " in text, key


def test_renamed_example_names_everything_differently() -> None:
    p = load_profile("renamed-example")  # a shipped profile, found by name
    assert p.source == str(PROFILES_DIR / "renamed-example.toml")
    assert (p.name, p.path, p.namespace, p.ack_mode, p.token_in) == ("renamed-example", "/rt/", "/chat", "echo", "query")
    assert p.event("send_message") == "chat:send" and p.event("new_message") == "chat:new"
    assert p.field("channel_id") == p.field("room") == p.field("channel") == "channelId"
    assert (p.backfill_url, p.backfill_key) == ("/api/rooms/{channel_id}/history?since={after}&max={limit}", "messages")
    assert not p.speaks_like(DEFAULT_PROFILE)
    assert sorted(builtin_profiles()) == ["default", "foreign-example", "renamed-example"]


def test_unspecified_keys_keep_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'path = "ws"\n[events]\nsend_message = "message"\n[fields]\ncontent = "text"\n'
                           '[backfill]\nkey = "items"\n', name="mine.toml")
    p = load_profile(str(path))
    assert p.name == "mine"  # the file name when the file does not say
    assert p.path == "/ws/"  # normalised like the transports do
    assert p.event("send_message") == "message" and p.event("join") == "join"
    assert p.field("content") == "text" and p.field("temp_id") == "temp_id"
    assert p.backfill_key == "items" and p.backfill_url == DEFAULT_PROFILE.backfill_url
    assert p.speaks_like(p) and not p.speaks_like(DEFAULT_PROFILE)
    assert replace(p, ack_mode="echo", name="x", backfill_limit=3).speaks_like(p)


def test_to_dict_mirrors_the_file_layout() -> None:
    d = load_profile("renamed-example").to_dict()
    assert orjson.loads(orjson.dumps(d)) == d  # plain JSON for summary.json
    assert d["backfill"] == {"url": "/api/rooms/{channel_id}/history?since={after}&max={limit}", "key": "messages",
                             "limit": 200, "auth": "header", "auth_name": "Authorization",
                             "auth_value": "Bearer {token}", "headers": {}, "next": ""}
    assert (d["id_order"], d["ts_unit"], d["token_name"]) == ("int", "s", "")
    assert d["events"]["join"] == "subscribe" and d["source"].endswith("renamed-example.toml")
    assert DEFAULT_PROFILE.to_dict()["backfill"]["key"] == ""


@pytest.mark.parametrize("text,needles", [
    ("colour = 1\n", ["unknown top-level key 'colour'", "allowed: name, path"]),
    ('ack_mode = "maybe"\n', ["ack_mode must be one of callback, echo", "'maybe'"]),
    ('token_in = "cookie"\n', ["token_in must be one of auth, query, header"]),
    ("join_ack = 1\n", ["join_ack must be true or false, got an integer 1"]),
    ('events = "x"\n', ["events must be a table"]),
    ('[events]\nsend = "x"\n', ["[events] 'send' is not a contract event", "allowed: join, leave, send_message"]),
    ('[fields]\nbody = "x"\n', ["[fields] 'body' is not a contract field", "allowed: room, ok"]),
    ('[events]\njoin = ""\n', ["[events] join must be a non-empty string"]),
    ('[fields]\nid = 3\n', ["[fields] id must be a non-empty string, got 3"]),
    ('[events]\njoin = "x"\nleave = "x"\n', ["join and leave are both 'x'", "client sends"]),
    ('[fields]\ncontent = "temp_id"\n', ["content and temp_id are both 'temp_id'", "send_message payload"]),
    ('[backfill]\nurl = "/m?after={after}&ch={channel}"\n', ["unknown placeholder(s) channel", "{channel_id}"]),
    ('[backfill]\nurl = "/m/{channel_id}"\n', ["must start with \"/\" and contain {channel_id} and {after}"]),
    ('[backfill]\nurl = "/m/{channel_id}?a={after"\n', ["not a valid template"]),
    ("[backfill]\nlimit = 0\n", ["backfill.limit must be >= 1"]),
    ("[backfill]\nlimit = true\n", ["backfill.limit must be an integer, got true or false"]),
    ("[backfill]\npage = 3\n", ["unknown key in [backfill] 'page'", "allowed: url, key, limit"]),
    ('path = "/"\n', ["path must be the Socket.IO path"]),
    ('namespace = "chat"\n', ["namespace must start with \"/\""]),
    ('ws_path = "ws"\n', ["ws_path must be the plain WebSocket endpoint's path", "'ws'"]),
    ('name = " "\n', ["name must not be empty"]),
    ("name = \n", ["not valid TOML"]),
])
def test_bad_profiles_name_file_key_and_what_is_allowed(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"profile {path}: "), message
    for needle in needles:
        assert needle in message, message


def test_missing_or_unreadable_profile_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no profile file .nope.toml.*default, foreign-example, renamed-example"):
        load_profile("nope.toml")
    with pytest.raises(UsageError, match="is not a file"):
        load_profile(tmp_path)
    with pytest.raises(UsageError, match="not UTF-8"):
        load_profile((tmp_path / "bin.toml").write_bytes(b"\xff\xfe") and tmp_path / "bin.toml")


def test_ack_follows_the_profile_unless_chosen() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ack", default="callback", choices=["callback", "echo"])
    ack_follows_profile(parser)
    echo_profile = Profile(ack_mode="echo")
    assert parser.parse_args([]).ack == "profile"
    assert echo_profile.ack_for(parser.parse_args([]).ack) == "echo"
    assert echo_profile.ack_for(parser.parse_args(["--ack", "callback"]).ack) == "callback"
    assert DEFAULT_PROFILE.ack_for(None) == "callback"


@pytest.mark.timeout(90)
def test_run_against_a_renamed_server_with_its_profile(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory("py-renamed", token="tok")
    res = _roombench("run", "--host", server.url, "--profile", str(PROFILES_DIR / "renamed-example.toml"),
                     "--token", "tok", "--users", "4", "--spawn-rate", "50", "--duration", "3", "--room-size", "2",
                     "--rate", "4", "--drain", "3", "--slo", "lost==0", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((tmp_path / "summary.json").read_bytes())
    d = s["delivery"]
    assert d["sent"] == d["acked"] > 0
    assert d["delivered_live"] == d["expected"]
    # rooms of 2: one other member each, but for a first message or two sent before it had joined
    assert d["sent"] - 4 <= d["expected"] <= d["sent"]
    assert s["errors"] == {}
    assert s["metadata"]["scenario"]["ack"] == "echo"  # the profile's ack_mode, as --ack was not given
    assert s["metadata"]["profile"]["name"] == "renamed-example"
    assert s["metadata"]["profile"]["source"] == str(PROFILES_DIR / "renamed-example.toml")


def test_run_refuses_a_foreign_profile_for_the_embedded_server(tmp_path: Path) -> None:
    res = _roombench("run", "--profile", "renamed-example", "--out", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pass --host" in res.stderr


def test_run_options_take_a_profile_or_its_file() -> None:
    from roombench.bench.run import RunOptions

    assert RunOptions().wire is DEFAULT_PROFILE
    assert RunOptions(profile="renamed-example").wire.namespace == "/chat"  # e.g. from a sweep file
    assert RunOptions(profile=Profile(name="x")).wire.name == "x"
    with pytest.raises(UsageError, match="no profile file"):
        RunOptions(profile="nope.toml")


def _roombench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
