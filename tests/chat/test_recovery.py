"""--recovery rest|csr|auto: each outcome the issue asks for, end to end against the real
node servers (short runs: 4-6 users for 3 s with forced drops)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from roombench.chat.scenario import Scenario
from roombench.exceptions import UsageError
from roombench.generator import Generator, run_for
from roombench.measure.summary import recovery_section
from roombench.servers import ServerProcess, start_server
from roombench.servers.variants import CSR_MAX_ENV

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(40)

MAX_MS = 1500  # node-csr's maxDisconnectionDuration here
DROPPY = Scenario(token=REF_TOKEN, rate=10, room_size=3, drop_every=0.6, reconnect_delay=0.1,
                  reconnect_delay_max=0.5, drain=3, recovery="csr")


@pytest.fixture(scope="module")
def csr_server() -> Iterator[ServerProcess]:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (`node` is not on PATH)")
    mp = pytest.MonkeyPatch()
    mp.setenv(CSR_MAX_ENV, str(MAX_MS))
    try:
        with start_server("node-csr", token=REF_TOKEN) as server:
            yield server
    finally:
        mp.undo()


def _run(url: str, scenario: Scenario, users: int = 6, duration: float = 3.0) -> tuple[dict[str, Any], dict[str, Any]]:
    report = run_for(Generator(url, scenario), users, duration)
    c = report["ledger"]
    assert c["lost"] == 0
    assert (c["duplicates"], c["out_of_order"], c["unexpected"]) == (0, 0, 0)
    assert c["delivered_live"] + c["recovered"] == c["expected"]
    assert c["recovered"] == c["recovered_replay"] + c["recovered_backfill"]
    return c, recovery_section(report["counters"], c, None)


def test_csr_recovers_nearly_every_reconnect_and_loses_nothing(csr_server: ServerProcess) -> None:
    c, r = _run(csr_server.url, DROPPY)
    assert r["reconnects"] >= 6
    assert r["recovered"] / r["reconnects"] > 0.95, r["not_recovered"]
    assert c["recovered_replay"] > 0 and r["replayed"] >= c["recovered_replay"]
    assert c["recovered_backfill"] == 0  # csr backfills only what was not recovered


def test_csr_drops_longer_than_max_disconnection_fall_back_to_backfill(csr_server: ServerProcess) -> None:
    scenario = replace(DROPPY, drop_every=1.0, drop_for=MAX_MS / 1000 + 0.8)
    c, r = _run(csr_server.url, scenario, users=4, duration=4.0)
    assert r["reconnects"] >= 3
    assert r["recovered"] == 0
    assert set(r["not_recovered"]) <= {"expired", "no_offset"} and r["not_recovered"].get("expired", 0) > 0
    assert c["recovered_replay"] == 0 and c["recovered_backfill"] == c["recovered"] > 0


def test_auto_recovers_and_backfills_as_a_safety_net(csr_server: ServerProcess) -> None:
    c, r = _run(csr_server.url, replace(DROPPY, recovery="auto"))
    assert r["recovered"] / r["reconnects"] > 0.95, r["not_recovered"]
    assert c["recovered_replay"] > 0
    # the backfill re-fetches what the replay brought: deduped, counted, never a duplicate
    assert c["replay_backfill_overlap"] > 0
    assert r["backfilled_after_recovery"] == 0  # the replay missed nothing


def test_csr_against_a_server_without_recovery_falls_back(server_factory: Any) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (`node` is not on PATH)")
    server = server_factory("node", token=REF_TOKEN)
    c, r = _run(server.url, DROPPY)
    assert r["reconnects"] >= 6 and r["recovered"] == 0
    assert r["not_recovered"] == {"unsupported": r["reconnects"]}
    assert c["recovered"] == c["recovered_backfill"] > 0


@pytest.mark.parametrize("bad, message", [
    ({"recovery": "csr", "transport": "compat"}, "--recovery csr/auto needs --transport lean"),
    ({"recovery": "x"}, "--recovery must be rest, csr or auto"),
    ({"drop_for": 2.0, "transport": "ws"}, "--drop-for needs --transport lean"),
    ({"drop_for": -1.0}, "--drop-for must be between 0"),
])
def test_bad_recovery_options_are_one_line_usage_errors(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("-", "\\-")):
        Scenario(**bad).validate()


def test_csr_across_two_processes_with_the_redis_streams_adapter(server_factory: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("node") is None or shutil.which("redis-server") is None:
        pytest.skip("needs node and redis-server on PATH")
    monkeypatch.setenv(CSR_MAX_ENV, str(MAX_MS))
    server = server_factory("node-csr-redis", token=REF_TOKEN)
    assert "," in server.url  # two processes: users spread over both
    c, r = _run(server.url, DROPPY)
    assert r["reconnects"] >= 6
    assert r["recovered"] / r["reconnects"] > 0.95, r["not_recovered"]
    assert c["recovered_replay"] > 0


def test_a_bad_max_disconnection_duration_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CSR_MAX_ENV, "soon")
    with pytest.raises(UsageError, match=f"\\${CSR_MAX_ENV} must be a whole number of milliseconds"):
        start_server("node-csr")
