"""`roombench check`: every contract point against real servers on loopback, and the CLI verb."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roombench.check.points import POINTS, CheckResult, _Check, check, format_results
from roombench.check.client import Failed
from roombench.wire.profile import DEFAULT_PROFILE, PROFILES_DIR, Profile, load_profile
from roombench.servers import free_port

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(30)

RENAMED = PROFILES_DIR / "renamed-example.toml"


def statuses(results: list[CheckResult]) -> dict[str, str]:
    assert [r.name for r in results] == list(POINTS)
    return {r.name: r.status for r in results}


def failed(results: list[CheckResult]) -> dict[str, str]:
    return {r.name: r.detail for r in results if r.status == "FAIL"}


@pytest.fixture(scope="module")
def renamed_server() -> Iterator[Any]:
    from roombench.servers import start_server

    with start_server("py-renamed", token=REF_TOKEN) as server:
        yield server


def test_reference_server_passes_every_point(ref_server: Any) -> None:
    results = check(ref_server.url, DEFAULT_PROFILE, REF_TOKEN)
    assert failed(results) == {}
    assert set(statuses(results).values()) == {"PASS"}
    text = format_results(results, ref_server.url, DEFAULT_PROFILE)
    assert text.splitlines()[-1] == f"{len(POINTS)} passed, 0 failed, 0 not checked"


def test_reference_server_passes_in_echo_mode_too(ref_server: Any) -> None:
    # the reference server echoes to the sender as well as acking: both modes hold
    results = check(ref_server.url, Profile(ack_mode="echo"), REF_TOKEN)
    assert failed(results) == {}
    assert "own 'new_message'" in next(r.detail for r in results if r.name == "confirm")


def test_renamed_server_passes_with_its_profile(renamed_server: Any) -> None:
    profile = load_profile(RENAMED)
    results = check(renamed_server.url, profile, REF_TOKEN)
    assert failed(results) == {}
    assert set(statuses(results).values()) == {"PASS"}
    join = next(r.detail for r in results if r.name == "join")
    assert "'success': True" in join and "'lastMessageId': None" in join


def test_renamed_server_fails_without_its_profile(renamed_server: Any) -> None:
    t0 = time.monotonic()
    results = check(renamed_server.url, DEFAULT_PROFILE, REF_TOKEN)
    assert time.monotonic() - t0 < 3
    s = statuses(results)
    assert s["connect"] == "FAIL"
    assert "/socket.io/" in failed(results)["connect"] and "HTTP 403" in failed(results)["connect"]
    assert {name for name, status in s.items() if status == "SKIP"} == set(POINTS) - {"connect"}
    assert all(r.detail == "not checked: connect failed" for r in results if r.status == "SKIP")


def test_half_right_profile_fails_where_the_names_differ(renamed_server: Any, tmp_path: Path) -> None:
    # right path, namespace and token placement, but the contract's event and field names
    path = tmp_path / "half.toml"
    path.write_text('path = "/rt/"\nnamespace = "/chat"\ntoken_in = "query"\n')
    results = check(renamed_server.url, load_profile(path), REF_TOKEN, timeout=1.0)
    s = statuses(results)
    assert s["connect"] == s["auth"] == "PASS"
    assert s["join"] == "FAIL"
    assert "no 'join' ack within 1 s" in failed(results)["join"]
    assert "set join_ack = false" in failed(results)["join"]


@pytest.mark.parametrize("faults,failing", [
    ({"backfill_empty": True}, {"backfill", "catch_up"}),
    ({"drop_live_every": 2}, {"fanout"}),
])
def test_faulty_servers_fail_the_right_points(server_factory: Any, faults: dict[str, Any], failing: set[str]) -> None:
    server = server_factory(token=REF_TOKEN, faults=faults)
    results = check(server.url, DEFAULT_PROFILE, REF_TOKEN, timeout=1.0)
    assert set(failed(results)) == failing, failed(results)


def test_slow_acks_fail_confirm_with_a_hint(server_factory: Any) -> None:
    server = server_factory(token=REF_TOKEN, faults={"ack_delay_ms": 1500})
    results = check(server.url, DEFAULT_PROFILE, REF_TOKEN, timeout=0.5)
    assert "no 'send_message' ack within 0.5 s" in failed(results)["confirm"]
    assert 'ack_mode = "echo"' in failed(results)["confirm"]


@pytest.mark.parametrize("items", [
    [{"id": 1}, {"content": "no id"}], [{"id": 1}, {"id": None}], [{"id": "1"}], [{"id": True}],
    [{"id": 2}, {"id": 2}], [{"id": 3}, {"id": 1}],
])
def test_backfill_ids_missing_null_or_out_of_order_fail(items: list[dict[str, Any]]) -> None:
    # no server needed: in_order only reads the page it is given
    probe = _Check(f"http://127.0.0.1:{free_port()}", DEFAULT_PROFILE, None, 1.0, "lean")
    raw = [m.get("id") for m in items]
    with pytest.raises(Failed, match=re.escape(f"after=0 returned ids {raw}: not positive integers in increasing order")):
        probe.in_order(items, "after=0")
    assert probe.in_order([{"id": 1}, {"id": 3}], "after=0") == [1, 3]
    assert probe.in_order([], "after=0") == []


def test_server_without_token_skips_the_auth_points(server_factory: Any) -> None:
    server = server_factory()
    s = statuses(check(server.url, DEFAULT_PROFILE, None))
    assert s["auth"] == s["backfill_auth"] == "SKIP"
    assert {v for k, v in s.items() if k not in ("auth", "backfill_auth")} == {"PASS"}


def test_missing_token_is_named(ref_server: Any) -> None:
    results = check(ref_server.url, DEFAULT_PROFILE, None)
    assert "refused" in failed(results)["connect"] and "--token" in failed(results)["connect"]


def test_dead_port_fails_connect_at_once() -> None:
    t0 = time.monotonic()
    results = check(f"http://127.0.0.1:{free_port()}", DEFAULT_PROFILE, None)
    assert time.monotonic() - t0 < 1.0
    assert "connection refused" in failed(results)["connect"]
    assert list(failed(results)) == ["connect"]


def test_silent_server_costs_one_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never answers
        t0 = time.monotonic()
        results = check(f"http://127.0.0.1:{silent.getsockname()[1]}", DEFAULT_PROFILE, None, timeout=1.0)
        assert time.monotonic() - t0 < 2.5
    assert "timed out" in failed(results)["connect"]


# -- the CLI verb ---------------------------------------------------------------------


def roombench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", "check", *args], capture_output=True, text=True,
                          timeout=30)


def test_cli_exit_codes(renamed_server: Any) -> None:
    ok = roombench(renamed_server.url, "--profile", "renamed-example", "--token", REF_TOKEN)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("\nPASS ") == len(POINTS) and ok.stderr == ""  # no gevent patching warnings either

    bad = roombench(renamed_server.url, "--token", REF_TOKEN)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL connect" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.parametrize("args,needle", [
    (["--profile", "BROKEN"], "'send' is not a contract event"),
    (["--profile", "no-such-profile"], "no profile file 'no-such-profile'"),
    (["--timeout", "0"], "--timeout must be > 0"),
])
def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: Any, args: list[str], needle: str) -> None:
    from roombench.cli import main

    broken = tmp_path / "broken.toml"
    broken.write_text("[events]\nsend = 'x'\n")
    args = [str(broken) if a == "BROKEN" else a for a in args]
    assert main(["check", f"http://127.0.0.1:{free_port()}", *args]) == 2
    out, err = capsys.readouterr()
    assert needle in err and err.count("\n") == 1 and out == ""
    assert main(["check", "htp://x"]) == 2
    assert "bad server URL" in capsys.readouterr().err


@pytest.mark.timeout(90)
@pytest.mark.parametrize("variant", ["py", "py-redis", "node", "node-redis", "ws"])
def test_every_variant_starts_passes_check_and_stops(variant: str) -> None:
    from roombench.servers import VARIANTS, start_server

    with start_server(variant, token="tok") as server:
        results = check(server.url, DEFAULT_PROFILE, "tok", 5.0, VARIANTS[variant].transport)
        assert [r.name for r in results if not r.ok] == [], format_results(results, server.url, DEFAULT_PROFILE)
        pids = server.pids
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_hints_follow_the_exception_types_not_their_text() -> None:
    from roombench.exceptions import ConnectTimeout, HandshakeFailed
    from roombench.exceptions import Refused

    probe = _Check(f"http://127.0.0.1:{free_port()}", DEFAULT_PROFILE, "tok", 1.0, "lean")
    assert "token in" in probe.connect_hint(Refused("go away"))
    assert "path /socket.io/" in probe.connect_hint(HandshakeFailed("nope", 403))
    assert "path" in probe.connect_hint(ConnectTimeout("slow", "handshake"))
    assert "namespace /" in probe.connect_hint(ConnectTimeout("slow", "session"))
    # a message that merely reads like one of them gets no hint
    from roombench.exceptions import ConnectFailed

    assert probe.connect_hint(ConnectFailed("WebSocket handshake refused the connection, timed out")) == ""


@pytest.mark.parametrize("status,needle", [(404, "[backfill] url"), (401, "[backfill] auth"), (500, "HTTP 500")])
def test_backfill_hint_follows_the_status(server_factory: Any, status: int, needle: str) -> None:
    server = server_factory(token=REF_TOKEN, faults={"backfill_status": status})
    results = check(server.url, DEFAULT_PROFILE, REF_TOKEN, timeout=1.0)
    assert needle in failed(results)["backfill"]
