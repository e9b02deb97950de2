"""Result folders with known samples (deterministic): a run (summary.json + interval logs)
and a sweep of such runs, for tests of the verdicts without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from roombench.chat.ledger import LedgerCounts
from roombench.measure.intervals import Interval, write_files
from roombench.measure.metrics import Metrics, add_values, new_histogram
from roombench.measure.summary import SCHEMA, write_json

DATA = Path(__file__).parent.parent / "data"


def fake_run(folder: Path, scale: float, seed: int, intervals: int = 20, per_interval: int = 400,
             lost: int = 0) -> Path:
    """A run folder: ack latencies lognormal around ``scale`` ms, ``intervals`` 1 s intervals."""
    rng = np.random.default_rng(seed)
    m = Metrics()
    ivs = []
    for i in range(intervals):
        us = (rng.lognormal(0.0, 0.5, per_interval) * scale * 1000).astype(np.int64) + 1
        h = new_histogram()
        add_values(h, us)
        add_values(m.histogram("ack"), us)
        ivs.append(Interval(1_700_000_000.0 + i, 1.0, {"ack": h}, {}))
    delivery = {**LedgerCounts(sent=intervals * per_interval, acked=intervals * per_interval).to_dict(),
                "lost": lost, "sends_skipped_offline": 0, "forced_drops": 0}
    meta = {"target": "x", "users": 1, "duration_s": intervals, "generator": {"saturation": []},
            "load": {"users": 1}, "scenario": {"rate": 1.0, "drop_every": 0}}
    summary: dict[str, Any] = {"schema": SCHEMA, "metadata": meta,
                               "latency_ms": m.summary(), "delivery": delivery, "errors": {},
                               "histograms": m.encode(), "slo": []}
    write_json(folder / "summary.json", summary)
    write_files(folder, 1.0, ivs)
    return folder


def fake_sweep(folder: Path, variants: dict[str, list[float]], intervals: int = 20, logs: bool = True) -> Path:
    """A sweep folder of one step: per variant (the first is the baseline) one repeat per
    scale listed. ``logs`` False: no ``.hlog`` files, as in results from before them."""
    plan = [{"dir": f"{v}/s0-r{i}", "variant": v, "step": 0, "repeat": i}
            for v, scales in variants.items() for i in range(len(scales))]
    for seed, (item, scale) in enumerate(zip(plan, [s for scales in variants.values() for s in scales])):
        run = fake_run(folder / item["dir"], scale, seed=seed, intervals=intervals)
        if not logs:
            for log in run.glob("*.hlog"):
                log.unlink()
    machine = orjson.loads((DATA / "sweep-v1" / "run.json").read_bytes())["machine"]
    meta = {"schema": "roombench.run/1", "machine": machine, "sweep_file": "fake.toml", "plan": plan,
            "done": [p["dir"] for p in plan], "capacity": {},
            "sweep": {"variants": [{"name": v} for v in variants], "steps": [{"users": 1, "rate": 1}],
                      "repeats": max(len(s) for s in variants.values())}}
    write_json(folder / "run.json", meta)
    return folder
