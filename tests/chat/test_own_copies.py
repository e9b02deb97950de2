"""Issue 9, point 1: a session knows its own copies by temp_id, whatever the server calls it.

The foreign server names users by socket id (ignoring the client's user id) and acks a send
before the sender's own copy arrives, so in callback mode the temp_id is already settled
when the echo comes: only the ledger still knows who sent it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from roombench.chat.ledger import Ledger
from roombench.chat.scenario import Scenario
from roombench.generator import Generator, run_for
from roombench.measure.metrics import Metrics
from roombench.wire.profile import load_profile

from tests.foreign_helpers import foreign_server

pytestmark = pytest.mark.timeout(90)

# the foreign server's names, but nothing else new: int ids and no token, so only the
# server's own user names and its ack-before-echo order are foreign here
NAMES_ONLY = '''
path = "/live/"
ack_mode = "callback"
[events]
join = "room:join"
leave = "room:leave"
send_message = "msg:send"
typing = "typing:start"
mark_read = "msg:read"
new_message = "msg:new"
user_typing = "typing:user"
message_read = "msg:seen"
[fields]
room = "roomId"
channel_id = "roomId"
channel = "roomId"
last_id = "lastId"
content = "text"
temp_id = "nonce"
id = "_id"
message_id = "msgId"
sender_id = "from"
user_id = "uid"
ts = "createdAt"
token = "accessToken"
[backfill]
url = "/api/v2/rooms/{channel_id}/messages?after={after}&limit={limit}"
'''

SCENARIO = Scenario(rate=10.0, room_size=3, typing_every=2, read_every=2, reconnect_delay=0.1,
                    reconnect_delay_max=0.5, drain=3.0, ack_timeout=3.0)


@pytest.fixture(scope="module")
def names_only(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = Path(tmp_path_factory.mktemp("profile")) / "names-only.toml"
    path.write_text(NAMES_ONLY, encoding="utf-8")
    with foreign_server(path, int_ids=True) as url:
        yield url, load_profile(path)


def test_ledger_knows_the_sender_of_every_temp_id() -> None:
    ledger = Ledger("p-")
    ledger.on_sent("p-1", "r", 7, frozenset({7, 8}), 0.0)
    assert ledger.sender_of("p-1") == 7 and ledger.sender_of("q-1") is None
    ledger.on_acked("p-1", 1)
    ledger.on_live(8, "p-1", 1)  # retired now: still known
    assert ledger.sender_of("p-1") == 7


@pytest.mark.parametrize("ack", ["callback", "echo"])
def test_own_copies_after_the_ack_are_neither_deliveries_nor_unexpected(names_only: Any, ack: str) -> None:
    url, profile = names_only
    report = run_for(Generator(url, replace(SCENARIO, ack=ack), profile), 6, 2.0)
    c = report["ledger"]
    assert c["sent"] > 50 and c["acked"] == c["sent"]
    assert c["delivered_live"] == c["expected"] == 2 * c["sent"]
    assert (c["unexpected"], c["duplicates"], c["lost"]) == (0, 0, 0)
    summary = Metrics.decode(report["metrics"]).summary()
    # the server's names for the typist and reader were learned from their own copies
    assert summary["typing"]["count"] > 0 and summary["read_receipt"]["count"] > 0
    assert report["errors"] == {}


def test_opaque_ids_rank_by_the_order_they_were_learned() -> None:
    # ids are never compared by value: "m-b" learned before "m-a" is the older one
    ledger = Ledger("p-", opaque_ids=True)
    ledger.on_sent("p-1", "r", 1, frozenset({1, 2}), 0.0)
    ledger.on_acked("p-1", "m-b")
    ledger.on_sent("p-2", "r", 1, frozenset({1, 2}), 0.0)
    ledger.on_acked("p-2", "m-a")
    ledger.on_sent("p-3", "r", 1, frozenset({1, 2}), 0.0)
    assert ledger.missing() == {(2, "r"): ""}  # p-1 was sent before any id: from the start
    ledger.on_live(2, "p-1", "m-b")
    assert ledger.missing() == {(2, "r"): "m-b"}  # p-2's fetch starts after m-b
    ledger.on_live(2, "p-2", "m-a")
    assert ledger.missing() == {(2, "r"): "m-a"}
    assert ledger.counts().out_of_order == 0
