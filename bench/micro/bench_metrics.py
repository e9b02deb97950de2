"""Micro-benchmark of the per-message hot path: Metrics.record and the Ledger calls.

Prints nanoseconds per operation (best of a few repeats, loop overhead included).
The machine is shared: run it twice and trust the lower numbers.
Run: ``python -m bench.micro.bench_metrics [--n 200000]``. Not a test; bounded to a few seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from roombench.chat.ledger import Ledger
from roombench.measure.metrics import Metrics, new_histogram


def best_ns(fn: Callable[[int], None], n: int, repeats: int = 5) -> float:
    """Best per-op time over ``repeats`` runs of ``fn(n)``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def bench_record(n: int) -> dict[str, float]:
    samples = [(i % 50_000 + 1) / 1e6 for i in range(n)]

    def record(_: int) -> None:
        m = Metrics()
        rec = m.record
        for s in samples:
            rec("ack", s)
        m.flush()  # amortized flush cost included

    def hdrh_record_value(_: int) -> None:
        h = new_histogram()
        for s in samples[: n // 10]:
            h.record_value(int(s * 1e6))

    def loop_only(_: int) -> None:
        for s in samples:
            pass

    return {
        "Metrics.record (amortized, incl. flush)": best_ns(record, n),
        "hdrh record_value (reference)": best_ns(hdrh_record_value, n // 10, repeats=2),
        "empty loop (overhead)": best_ns(loop_only, n),
    }


def bench_ledger(n: int, room_size: int, window: int = 2000) -> dict[str, float]:
    """Steady state: chunks of ``window`` messages are sent, acked, then delivered to every
    receiver, so at most ``window`` records are in flight (as in a run) and all retire."""
    members = frozenset(range(1, room_size + 1))
    receivers = list(range(2, room_size + 1))
    ledger = Ledger("bench-")
    totals = {"new_temp_id": 0, "on_sent": 0, "on_acked": 0, "on_live": 0}
    clock = time.perf_counter_ns
    msg_id = 0
    for _ in range(max(1, n // window)):
        new, on_sent, on_acked, on_live = ledger.new_temp_id, ledger.on_sent, ledger.on_acked, ledger.on_live
        t0 = clock()
        tids = [new() for _ in range(window)]
        t1 = clock()
        for tid in tids:
            on_sent(tid, "room", 1, members, 0.0)
        t2 = clock()
        for tid in tids:
            msg_id += 1
            on_acked(tid, msg_id)
        t3 = clock()
        for tid in tids:
            for r in receivers:
                on_live(r, tid, msg_id)
        t4 = clock()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    assert ledger.in_flight() == 0, "every record should have retired"
    msgs = max(1, n // window) * window
    return {
        "Ledger.new_temp_id": totals["new_temp_id"] / msgs,
        f"Ledger.on_sent (room of {room_size})": totals["on_sent"] / msgs,
        "Ledger.on_acked": totals["on_acked"] / msgs,
        "Ledger.on_live (incl. retirement)": totals["on_live"] / (msgs * len(receivers)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000, help="operations per timed run")
    parser.add_argument("--room-size", type=int, default=5, help="members per room (sender included)")
    args = parser.parse_args()
    rows = {**bench_record(args.n)}
    for _ in range(3):  # best of three steady-state runs, per operation
        for k, v in bench_ledger(args.n, args.room_size).items():
            rows[k] = min(v, rows.get(k, v))
    width = max(map(len, rows))
    for name, ns in rows.items():
        print(f"{name:<{width}}  {ns:8.0f} ns/op")
    per_ack = rows["Metrics.record (amortized, incl. flush)"] * 2 + sum(
        v for k, v in rows.items() if k.startswith(("Ledger.on_sent", "Ledger.on_acked", "Ledger.new_temp_id")))
    print(f"{'per ack (temp_id + on_sent + on_acked + 2 records)':<{width}}  {per_ack:8.0f} ns")


if __name__ == "__main__":
    main()
