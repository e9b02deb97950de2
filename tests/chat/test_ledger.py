"""The delivery ledger: expected versus live, backfilled, duplicated, lost."""

from __future__ import annotations

import pytest

from roombench.chat.ledger import OWN, Ledger, LedgerCounts

pytestmark = pytest.mark.timeout(30)

ROOM = "r1"
MEMBERS = frozenset({1, 2, 3})


def send(ledger: Ledger, room: str = ROOM, sender: int = 1, members: frozenset[int] = MEMBERS,
         t: float = 100.0) -> str:
    temp_id = ledger.new_temp_id()
    ledger.on_sent(temp_id, room, sender, members, t)
    return temp_id


def test_temp_ids_carry_a_per_process_prefix() -> None:
    a, b = Ledger(), Ledger()
    assert a.prefix != b.prefix
    assert a.new_temp_id() == f"{a.prefix}1"
    assert a.new_temp_id() == f"{a.prefix}2"
    assert Ledger("w3-").new_temp_id() == "w3-1"


def test_healthy_flow_counts_no_loss_and_retires() -> None:
    ledger = Ledger("p-")
    for i in range(10):
        tid = send(ledger, t=float(i))
        assert ledger.on_acked(tid, i + 1) == float(i)
        assert ledger.on_live(2, tid, i + 1) == float(i)
        assert ledger.on_live(3, tid, i + 1) == float(i)
    c = ledger.counts()
    assert c == LedgerCounts(sent=10, acked=10, expected=20, delivered_live=20)
    assert (c.lost, c.duplicates, c.live_missed, c.unexpected) == (0, 0, 0, 0)
    assert ledger.outstanding() == 0
    assert ledger.in_flight() == 0
    assert ledger.missing() == {}


def test_delivery_before_ack_is_counted_and_ack_returns_intended_time() -> None:
    ledger = Ledger("p-")
    tid = send(ledger, t=5.0)
    assert ledger.on_live(2, tid, 7) == 5.0
    assert ledger.outstanding() == 2  # receiver 3 pending + ack unsettled
    assert ledger.on_acked(tid, 7) == 5.0
    assert ledger.on_acked(tid, 7) is None  # already settled
    assert ledger.on_live(3, tid, 7) == 5.0
    assert ledger.in_flight() == 0
    assert ledger.on_acked(tid, 7) is None  # retired
    assert ledger.on_acked("unknown", 1) is None


def test_loss_is_exact() -> None:
    ledger = Ledger("p-")
    lost_one = send(ledger)
    ledger.on_acked(lost_one, 1)
    ledger.on_live(2, lost_one, 1)  # receiver 3 never gets it
    both_lost = send(ledger)
    ledger.on_acked(both_lost, 2)
    c = ledger.counts()
    assert (c.expected, c.delivered_live, c.live_missed, c.recovered, c.lost) == (4, 1, 3, 0, 3)
    assert ledger.outstanding() == 3
    assert ledger.in_flight() == 2  # records still missing something stay


def test_duplicate_live_before_and_after_retirement() -> None:
    ledger = Ledger("p-")
    tid = send(ledger)
    ledger.on_live(2, tid, 1)
    assert ledger.on_live(2, tid, 1) is None  # record still in flight
    assert ledger.counts().duplicates == 1
    ledger.on_acked(tid, 1)
    ledger.on_live(3, tid, 1)
    assert ledger.in_flight() == 0
    assert ledger.on_live(3, tid, 1) is None  # retired record
    assert ledger.counts().duplicates == 2
    # ours but beyond the retired window: still a duplicate by prefix
    tiny = Ledger("q-", retired_window=2)
    tids = [send(tiny) for _ in range(6)]
    for t in tids:
        tiny.on_acked(t, None)
        tiny.on_live(2, t, None)
        tiny.on_live(3, t, None)
    tiny.on_live(2, tids[0], None)
    c = tiny.counts()
    assert (c.duplicates, c.unexpected, c.delivered_live) == (1, 0, 12)


def test_foreign_temp_id_is_unexpected() -> None:
    ledger = Ledger("p-")
    assert ledger.on_live(2, "other-1", 9) is None
    c = ledger.counts()
    assert (c.unexpected, c.duplicates) == (1, 0)


@pytest.mark.parametrize("retired", [False, True])
def test_on_copy_tells_the_senders_own_copy_and_counts_the_rest_as_on_live(retired: bool) -> None:
    # on_copy is sender_of + on_live in one lookup (the receive path's call)
    ledger = Ledger("p-")
    tid = send(ledger, members=frozenset({1, 2, 3}), t=5.0)
    ledger.on_acked(tid, 1)
    assert ledger.on_copy(2, tid, 1) == 5.0
    if retired:
        ledger.on_live(3, tid, 1)
        assert ledger.in_flight() == 0
    assert ledger.on_copy(1, tid, 1) is OWN  # the sender, in flight or retired: nothing counted
    assert ledger.on_copy(2, tid, 1) is None  # a second copy
    assert ledger.on_copy(4, tid, 1) is None  # a late joiner
    assert ledger.on_copy(1, "other-1", 1) is None  # not ours at all
    c = ledger.counts()
    assert (c.delivered_live, c.duplicates, c.unexpected) == (1 + retired, 1, 2)
    if not retired:
        assert ledger.on_copy(3, tid, 1) == 5.0 and ledger.in_flight() == 0


def test_the_senders_own_copy_before_its_ack_says_the_server_has_it() -> None:
    # callback mode keeps no unconfirmed dict: the ledger tells an echoed send from one the
    # server may never have had, should its ack die with the connection
    ledger = Ledger("p-")
    echoed, other, unheard = (send(ledger, members=frozenset({1, 2})) for _ in range(3))
    assert not any(ledger.server_has(t) for t in (echoed, other, unheard))
    assert ledger.on_copy(1, echoed, 7) is OWN
    assert ledger.on_copy(2, other, 8) == 100.0  # a delivery to another member tells it as well
    assert (ledger.server_has(echoed), ledger.server_has(other), ledger.server_has(unheard)) == (True, True, False)
    assert ledger.counts().delivered_live == 1  # the own copy counted nothing


def test_reorder_counter() -> None:
    ledger = Ledger("p-")
    ledger.note_out_of_order()
    ledger.note_out_of_order()
    assert ledger.counts().out_of_order == 2


@pytest.mark.parametrize("retired", [False, True])
def test_late_joiner_is_unexpected_not_duplicate(retired: bool) -> None:
    ledger = Ledger("p-")
    tid = send(ledger, members=frozenset({1, 2}))  # user 4 joins after the send
    ledger.on_acked(tid, 1)
    if retired:
        ledger.on_live(2, tid, 1)
        assert ledger.in_flight() == 0
    assert ledger.on_live(4, tid, 1) is None
    ledger.on_live(1, tid, 1)  # a sender's echo passed by mistake is not a duplicate either
    c = ledger.counts()
    assert (c.unexpected, c.duplicates, c.expected) == (2, 0, 1)


def test_backfill_recovers_missed_and_ignores_overlap() -> None:
    ledger = Ledger("p-")
    tid = send(ledger)
    ledger.on_acked(tid, 10)
    ledger.on_live(2, tid, 10)
    assert ledger.on_backfill(2, tid, 10) is False  # overlap with live: not counted
    assert ledger.on_backfill(3, tid, 10) is True  # receiver 3 missed it live
    assert ledger.on_backfill(3, tid, 10) is False
    assert ledger.on_backfill(3, "p-999", 11) is False
    c = ledger.counts()
    assert (c.delivered_live, c.live_missed, c.recovered, c.lost, c.duplicates) == (1, 1, 1, 0, 0)
    assert ledger.outstanding() == 0
    assert ledger.in_flight() == 0


def test_live_copy_after_backfill_is_overlap_but_a_second_is_duplicate() -> None:
    ledger = Ledger("p-")
    tid = send(ledger)
    ledger.on_backfill(3, tid, 10)
    assert ledger.on_live(3, tid, 10) is None  # the live copy arrived after the fetch
    assert ledger.counts().duplicates == 0
    ledger.on_live(3, tid, 10)
    assert ledger.counts().duplicates == 1
    c = ledger.counts()
    assert (c.delivered_live, c.recovered, c.lost) == (0, 1, 1)  # receiver 2 still missing


def test_missing_gives_an_after_id_covering_non_contiguous_ids() -> None:
    ledger = Ledger("p-")
    ids = {}
    for msg_id in (10, 20, 35):
        tid = send(ledger)
        ledger.on_acked(tid, msg_id)
        ids[msg_id] = tid
    # receiver 2 got 10 live, missed 20 and 35; receiver 3 got 10 and 20, missed 35
    ledger.on_live(2, ids[10], 10)
    ledger.on_live(3, ids[10], 10)
    ledger.on_live(3, ids[20], 20)
    other = send(ledger, room="r2", members=frozenset({1, 2}))
    assert ledger.missing() == {(2, ROOM): 10, (3, ROOM): 20, (2, "r2"): 0}
    assert ledger.missing(receiver=3) == {(3, ROOM): 20}
    ledger.on_acked(other, 4)
    ledger.on_backfill(2, ids[20], 20)
    assert ledger.missing()[(2, ROOM)] == 20


def test_ack_timeout_then_late_deliveries_still_counted() -> None:
    ledger = Ledger("p-")
    tid = send(ledger, t=1.0)
    ledger.on_ack_failed(tid, "timeout")
    assert ledger.on_live(2, tid, 5) == 1.0
    assert ledger.on_acked(tid, 5) is None  # already settled as failed
    other = send(ledger)
    ledger.on_ack_failed(other, "error: rate limited")
    ledger.on_ack_failed(other, "timeout")  # settled once only
    assert ledger.on_live(3, tid, 5) == 1.0
    c = ledger.counts()
    assert (c.sent, c.acked, c.ack_timeouts, c.ack_errors, c.delivered_live) == (2, 0, 1, 1, 2)
    assert ledger.outstanding() == 2  # the second message's two receivers
    assert ledger.in_flight() == 1


def test_void_withdraws_a_send_the_server_never_had() -> None:
    ledger = Ledger("p-")
    tid = send(ledger)
    ledger.on_ack_failed(send(ledger), "timeout")
    assert ledger.void(tid) is True
    assert ledger.void(tid) is False
    assert ledger.void("p-999") is False
    c = ledger.counts()
    assert (c.sent, c.voided, c.ack_errors, c.expected, c.lost) == (2, 1, 0, 2, 2)
    assert ledger.outstanding() == 2  # only the timed-out message's receivers
    assert ledger.missing() == {(2, ROOM): 0, (3, ROOM): 0}
    assert ledger.in_flight() == 1


def test_a_room_of_one_expects_nobody_and_a_lone_other_member_is_still_expected() -> None:
    # a room of one shares one empty pending set: voiding or acking it must not touch it
    ledger = Ledger("p-")
    alone, other = send(ledger, sender=1, members=frozenset({1})), send(ledger, sender=1, members=frozenset({2}))
    assert ledger.void(alone) is True
    lone = send(ledger, sender=1, members=frozenset({1}))
    assert ledger.on_acked(lone, 7) == 100.0 and ledger.in_flight() == 1  # retired at once: nobody pending
    assert ledger.on_live(2, other, 8) == 100.0  # the sender not among the members: 2 is still expected
    c = ledger.counts()
    assert (c.sent, c.voided, c.expected, c.delivered_live, c.unexpected, c.lost) == (3, 1, 1, 1, 0, 0)
    assert ledger.on_copy(1, send(ledger, sender=1, members=frozenset({1})), 9) is OWN


def test_retirement_keeps_memory_bounded() -> None:
    ledger = Ledger("p-")
    members = frozenset(range(1, 6))
    for i in range(100_000):
        tid = ledger.new_temp_id()
        ledger.on_sent(tid, ROOM, 1, members, 0.0)
        ledger.on_acked(tid, i + 1)
        for r in (2, 3, 4, 5):
            ledger.on_live(r, tid, i + 1)
    assert ledger.in_flight() == 0
    assert not ledger._records
    assert len(ledger._retired.codes) + len(ledger._retired_old.codes) <= 2 * ledger._retired_window
    assert ledger.counts().delivered_live == 400_000


def feed(ledger: Ledger, events: list[tuple]) -> None:
    for name, *args in events:
        getattr(ledger, name)(*args)


def test_counts_merge_equals_one_ledger_fed_everything() -> None:
    def events(prefix: str, room: str) -> list[tuple]:
        return [
            ("on_sent", f"{prefix}1", room, 1, MEMBERS, 0.0), ("on_acked", f"{prefix}1", 1),
            ("on_live", 2, f"{prefix}1", 1), ("on_live", 2, f"{prefix}1", 1),
            ("on_sent", f"{prefix}2", room, 2, MEMBERS, 0.0), ("on_ack_failed", f"{prefix}2", "timeout"),
            ("on_backfill", 1, f"{prefix}2", 2), ("on_live", 3, f"{prefix}2", 2),
            ("on_live", 9, "foreign-1", 3), ("note_out_of_order",),
            ("on_sent", f"{prefix}3", room, 3, MEMBERS, 0.0), ("void", f"{prefix}3"),
        ]
    a, b, both = Ledger("a-"), Ledger("b-"), Ledger("c-")
    ev_a, ev_b = events("a-", "ra"), events("b-", "rb")
    feed(a, ev_a)
    feed(b, ev_b)
    feed(both, ev_a + ev_b)
    merged = a.counts() + b.counts()
    assert merged == both.counts()
    assert merged == LedgerCounts.sum([a.counts(), b.counts()]) == a.counts().merge(b.counts())
    assert LedgerCounts.from_dict(merged.to_dict()) == merged
    assert LedgerCounts.from_dict({**merged.to_dict(), "future_field": 3}) == merged
    assert merged.lost == merged.live_missed - merged.recovered == 2
    assert (merged.voided, merged.sent, merged.expected) == (2, 6, 8)


def test_retired_messages_are_nothing_the_cyclic_collector_scans() -> None:
    import gc

    ledger = Ledger("p-")
    members = frozenset({1, 2, 3})
    for i in range(100):
        ledger.on_sent(f"p-{i}", "r", 1, members, 0.0)
        ledger.on_acked(f"p-{i}", i)
        ledger.on_live(2, f"p-{i}", i)
        ledger.on_live(3, f"p-{i}", i)
    assert ledger.in_flight() == 0
    assert not any(gc.is_tracked(code) for code in ledger._retired.codes.values())
    assert len(ledger._retired.sets) == 1  # one member set, shared by every message sent to it
    # and still classified: a second copy is a duplicate, the sender's copy is not a delivery
    ledger.on_live(2, "p-5", 5)
    ledger.on_live(1, "p-6", 6)
    c = ledger.counts()
    assert (c.duplicates, c.unexpected) == (1, 1) and ledger.sender_of("p-7") == 1
