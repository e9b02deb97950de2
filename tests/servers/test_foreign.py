"""The py-foreign server, and the generator measuring it right under foreign-example.toml.

Issue 9: a server that names users itself (anew on every reconnect), acks before the
sender's own copy, uses string ids, wants X-Access-Token on REST and pages its backfill
as {"data": {"items": [...]}, "next": cursor}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

from roombench.chat.backfill import BackfillClient
from roombench.chat.scenario import Scenario
from roombench.generator import Generator, run_for
from roombench.measure.metrics import Metrics
from roombench.servers import ServerProcess, start_server
from roombench.wire.profile import load_profile

from roombench.transport.registry import make_transport

from tests.helpers import REF_TOKEN, Acks, Recorder, new_room, wait_for

pytestmark = pytest.mark.timeout(90)

SCENARIO = Scenario(token=REF_TOKEN, rate=10.0, room_size=3, typing_every=2, read_every=2, reconnect_delay=0.1,
                    reconnect_delay_max=0.5, drain=3.0, ack_timeout=3.0)


@pytest.fixture(scope="module")
def foreign() -> Iterator[ServerProcess]:
    with start_server("py-foreign", token=REF_TOKEN) as server:
        yield server


def _fill(url: str, room: str, n: int) -> list[str]:
    """Send ``n`` messages to ``room`` over the generator's own transport; their ids."""
    profile = load_profile("foreign-example")
    t = make_transport("lean", url, profile, Recorder().handlers, token=REF_TOKEN)
    t.connect()
    acks = Acks()
    try:
        t.emit(profile.event("join"), {profile.field("room"): room}, acks)
        for i in range(n):
            t.emit(profile.event("send_message"), {profile.field("channel_id"): room,
                                                   profile.field("content"): "x",
                                                   profile.field("temp_id"): f"t{i}"}, acks)
        wait_for(lambda: len(acks.calls) == n + 1)
    finally:
        t.close()
    return [payload[profile.field("id")] for payload, _ in acks.calls[1:]]


def test_backfill_needs_the_access_token_header(foreign: ServerProcess) -> None:
    room = new_room()
    url = f"{foreign.url}/api/v2/rooms/{room}/messages?after=&limit=5&cursor="
    assert requests.get(url, headers={"Authorization": f"Bearer {REF_TOKEN}"}, timeout=5).status_code == 401
    assert requests.get(url, headers={"X-Access-Token": REF_TOKEN}, timeout=5).status_code == 200


def test_backfill_client_sends_the_profiles_auth_and_follows_cursors(foreign: ServerProcess) -> None:
    profile = replace(load_profile("foreign-example"), backfill_limit=3)
    room = new_room()
    ids = _fill(foreign.url, room, 8)
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 8
    rest = BackfillClient(foreign.url, profile, REF_TOKEN)
    try:
        got = rest.after(room, "", 1e18)  # 3 pages of 3, 3, 2
        assert [m["_id"] for m in got] == ids
        assert [m["_id"] for m in rest.after(room, ids[4], 1e18)] == ids[5:]
    finally:
        rest.close()


def test_run_with_drops_loses_nothing_and_times_typing_and_reads(foreign: ServerProcess) -> None:
    profile = load_profile("foreign-example")
    report = run_for(Generator(foreign.url, replace(SCENARIO, drop_every=0.7), profile), 6, 4.0)
    c = report["ledger"]
    assert report["counters"]["forced_drops"] >= 3
    assert c["sent"] > 100 and c["recovered"] > 0
    assert (c["lost"], c["duplicates"], c["unexpected"], c["out_of_order"]) == (0, 0, 0, 0)
    summary = Metrics.decode(report["metrics"]).summary()
    assert summary["typing"]["count"] > 0 and summary["read_receipt"]["count"] > 0
    assert "malformed_message" not in report["errors"] and "backfill_error" not in report["errors"]


def test_check_passes_the_foreign_server_with_its_profile(foreign: ServerProcess) -> None:
    from roombench.check.points import check

    results = check(foreign.url, load_profile("foreign-example"), REF_TOKEN)
    assert [r.name for r in results if r.status != "PASS"] == [], results


def test_check_names_the_profile_key_to_change(foreign: ServerProcess) -> None:
    from roombench.check.points import check

    profile = load_profile("foreign-example")
    by_name = {r.name: r for r in check(foreign.url, replace(profile, id_order="int"), REF_TOKEN)}
    assert by_name["confirm"].status == "FAIL" and 'id_order = "opaque"' in by_name["confirm"].detail
    bearer = replace(profile, backfill_auth_name="Authorization", backfill_auth_value="Bearer {token}")
    by_name = {r.name: r for r in check(foreign.url, bearer, REF_TOKEN)}
    assert by_name["backfill"].status == "FAIL" and "[backfill] auth" in by_name["backfill"].detail
    assert by_name["backfill_auth"].status == "PASS"  # a wrong token is refused either way
