"""`roombench compare`: verdicts by U test (repeats) or bootstrap (interval logs), --fail-on gates.

The statistics are checked on folders written here (summary.json + .hlog files with known
samples: deterministic); the end-to-end test compares real runs against the reference server
with and without an ack delay fault.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roombench.exceptions import UsageError
from roombench.bench.compare import compare, format_table, parse_gate
from roombench.bench.significance import Sparse, bootstrap_ratio, interval_samples, mann_whitney_p, min_p_exact
from roombench.measure.metrics import add_values, new_histogram

from tests.bench.fakes import fake_run


def roombench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def ack_row(c: Any, stat: str = "p99") -> Any:
    return next(r for r in c.rows if r.metric == "ack" and r.stat == stat)


def test_mann_whitney_exact_and_tied_match_known_values() -> None:
    # every b above every a: the most extreme arrangement, p = 2 / C(8, 4)
    assert mann_whitney_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert mann_whitney_p([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(2 / 70)
    # scipy.stats.mannwhitneyu([1, 3, 5, 7], [2, 4, 6, 8], method="exact"): p = 0.6857
    assert mann_whitney_p([1, 3, 5, 7], [2, 4, 6, 8]) == pytest.approx(0.685714, abs=1e-5)
    # ties: normal approximation. By hand: U = 0.5, mu = 12.5, tie term 5 x (2^3 - 2) = 30,
    # sigma = sqrt(25/12 x (11 - 30/90)) = 4.714, z = (12 - 0.5) / 4.714 = 2.440, p = erfc(z/sqrt 2)
    assert mann_whitney_p([1, 1, 2, 2, 3], [3, 4, 4, 5, 5]) == pytest.approx(0.01471, abs=1e-4)
    assert min_p_exact(3, 3) > 0.05 > min_p_exact(4, 4)


def _hists(scale: float, seed: int, n: int = 30, per: int = 300) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = new_histogram()
        add_values(h, (rng.lognormal(0.0, 0.5, per) * scale * 1000).astype(np.int64) + 1)
        out.append(h)
    return out


def sparse(hs: list[Any]) -> list[Sparse]:
    return [Sparse.of(h) for h in hs]


def test_block_bootstrap_brackets_the_true_ratio() -> None:
    base = _hists(2.0, seed=1)
    b, n, values = interval_samples(sparse(base), sparse(_hists(4.0, seed=2)))
    ci = bootstrap_ratio(b, n, values, [50.0, 99.0])
    for lo, hi in ci.values():
        assert lo < 2.0 < hi and lo > 1.5
    b, n, values = interval_samples(sparse(base), sparse(_hists(2.0, seed=3)))
    for lo, hi in bootstrap_ratio(b, n, values, [50.0, 99.0, 99.9]).values():
        assert lo < 1.0 < hi
    # one terrible second in a run widens its p99 interval instead of deciding it
    spiky = _hists(2.0, seed=4)
    add_values(spiky[7], np.full(300, 200_000, dtype=np.int64))
    b, n, values = interval_samples(sparse(base), sparse(spiky))
    lo, hi = bootstrap_ratio(b, n, values, [99.0])[99.0]
    assert lo < 1.2 and hi > 10


def test_same_distribution_is_not_significant_and_double_is_slower(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 2.0, seed=1)
    b = fake_run(tmp_path / "b", 2.0, seed=2)
    slow = fake_run(tmp_path / "slow", 4.0, seed=3)
    same = compare(a, b)
    assert {r.verdict for r in same.rows if r.metric == "ack"} == {"not significant"}
    worse = compare(a, slow)
    row = ack_row(worse)
    assert row.verdict == "slower" and row.test == "bootstrap"
    assert row.ratio == pytest.approx(2.0, rel=0.15)
    assert "block bootstrap over 20+20 intervals" in row.why
    assert ack_row(compare(slow, a)).verdict == "faster"
    # 8000 samples: a p99.9 (50 beyond it needs 50 000) is not tested; one metric: 4 rows share alpha
    assert "too few samples for a p99.9 test" in ack_row(worse, "p999").why
    assert worse.alpha == pytest.approx(0.05 / 4)
    text = format_table(worse)
    assert "slower" in text and "2.0" in text


def test_one_run_a_side_is_called_only_when_the_whole_interval_clears_the_minimum_effect(tmp_path: Path) -> None:
    # one run per side: the interval knows the spread within the runs, not between them (the
    # minimum effect's job), so 1.32x with an interval reaching down to 1.23 is not called,
    # 1.45x with all of it over 1.25 is
    a = fake_run(tmp_path / "a", 2.0, seed=1, per_interval=40)
    b = fake_run(tmp_path / "b", 2.7, seed=2, per_interval=40)
    rows = {r.stat: r for r in compare(a, b).rows if r.metric == "ack"}
    assert rows["p50"].ratio > 1.25 and rows["p50"].verdict == "not significant", rows["p50"]
    assert "1.23..1.45; under the 25% minimum effect (not all of it beyond)" in rows["p50"].why
    assert rows["p90"].verdict == "slower" and "1.33..1.61" in rows["p90"].why


def test_repeats_decide_by_u_test(tmp_path: Path) -> None:
    """A sweep's repeats: 4 + 4 with every new repeat slower is significant by U (exact: no ties)."""
    from roombench.bench.verdict import Run, decide
    from roombench.measure.summary import load_summary

    base = [Run(load_summary(fake_run(tmp_path / f"b{i}", 2.0 + 0.2 * i, seed=i, intervals=3) / "summary.json"), tmp_path)
            for i in range(4)]
    new = [Run(load_summary(fake_run(tmp_path / f"n{i}", 3.0 + 0.2 * i, seed=10 + i, intervals=3) / "summary.json"), tmp_path)
           for i in range(4)]
    verdict, test, why = decide("ack", "p50", base, new, ratio=1.5)
    assert (verdict, test) == ("slower", "mann-whitney-u")
    assert "4+4 repeats" in why and "p=0.0286" in why


def test_too_few_intervals_and_no_logs_are_not_significant(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 2.0, seed=1, intervals=3)
    b = fake_run(tmp_path / "b", 6.0, seed=2, intervals=3)
    assert "too few intervals" in ack_row(compare(a, b)).why
    (b / "ack.hlog").unlink()
    row = ack_row(compare(a, b))
    assert row.verdict == "not significant" and "no interval logs" in row.why
    assert row.ratio is not None and row.ratio > 2  # the ratio is still shown, just not called


@pytest.mark.parametrize("expr,relative,limit", [
    ("ack.p99>+10%", "%", 10.0), ("fanout.p50 > +5ms", "delta", 5.0), ("ack.p99>-3", "delta", -3.0),
    ("lost>0", "", 0.0), ("ack.p99>50", "", 50.0), ("errors>=1", "", 1.0),
])
def test_parse_gate(expr: str, relative: str, limit: float) -> None:
    g = parse_gate(expr)
    assert (g.relative, g.limit) == (relative, limit)


@pytest.mark.parametrize("expr,needle", [
    ("ack.p99>>10%", "bad --fail-on"), ("nonsense.p99>+10%", "bad --fail-on 'nonsense.p99>\\+10%': unknown metric"),
    ("ack.p12>+10%", "bad --fail-on 'ack.p12>\\+10%': 'p12' is not one of"),
    ("lost>+10%", "needs a latency metric"), ("ack.count>+10%", "relative gates compare"),
])
def test_bad_gate_is_a_usage_error(expr: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_gate(expr)


def test_gates_fail_only_on_significant_regressions(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 2.0, seed=1)
    b = fake_run(tmp_path / "b", 2.0, seed=2, lost=3)
    slow = fake_run(tmp_path / "slow", 4.0, seed=3)
    gates = [parse_gate("ack.p99>+10%"), parse_gate("lost>0")]
    same = compare(a, b, gates)
    assert [g.ok for g in same.gates] == [True, False]  # noise is not a regression; 3 lost is
    assert "lost = 3" in same.gates[1].detail
    worse = compare(a, slow, gates)
    assert [g.ok for g in worse.gates] == [False, True]
    assert "slower" in worse.gates[0].detail and "+" in worse.gates[0].detail
    assert compare(a, slow, [parse_gate("ack.p99>+200%")]).ok  # slower, but not by that much


def test_cli_exit_codes(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 2.0, seed=1)
    slow = fake_run(tmp_path / "slow", 4.0, seed=3)
    res = roombench("compare", str(a), str(slow / "summary.json"), "--fail-on", "ack.p99>+10%")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "gate ack.p99>+10%: FAIL" in res.stdout and "slower" in res.stdout
    res = roombench("compare", str(a), str(slow), "--fail-on", "lost>0")
    assert res.returncode == 0, res.stdout + res.stderr
    for args, needle in ((["--fail-on", "ack.p99>>1"], "bad --fail-on"), ([], "not a summary.json")):
        bad = roombench("compare", str(a), str(tmp_path / "nowhere") if not args else str(slow), *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.timeout(120)
def test_real_runs_delay_fault_is_slower_and_same_server_is_not(tmp_path: Path, server_factory: Any) -> None:
    """Two runs against one reference server, one against it with a 25 ms ack delay."""
    from tests.helpers import REF_TOKEN

    plain = server_factory("py", token=REF_TOKEN)
    delayed = server_factory("py", token=REF_TOKEN, faults={"ack_delay_ms": 25})
    small = ["--users", "6", "--spawn-rate", "50", "--duration", "10", "--room-size", "3", "--rate", "10",
             "--drain", "2", "--token", REF_TOKEN, "--quiet"]
    # one after another: run at once, each run's start-up (Locust's, ~1 s of CPU) lands in
    # the others' measured seconds, and "the same server" saw different machines (p90 1.5x)
    for name, url in (("a", plain.url), ("b", plain.url), ("slow", delayed.url)):
        res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--host", url, *small,
                              "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    same = compare(tmp_path / "a", tmp_path / "b")
    # the three runs share two cores with each other and the rest of the suite, each with its
    # own overlap: a row of the sparser metrics may differ for real (read receipts' p50 came
    # out 0.58x once, over 9+9 intervals); ack and fan-out, the metrics gated on, may not
    flagged = [r for r in same.rows if r.test and r.verdict != "not significant"]
    assert len(flagged) <= 1 and not [r for r in flagged if r.metric in ("ack", "fanout")], format_table(same)
    worse = compare(tmp_path / "a", tmp_path / "slow", [parse_gate("ack.p50>+10%")])
    row = ack_row(worse, "p50")
    assert row.verdict == "slower" and row.ratio is not None and row.ratio > 3, format_table(worse)
    assert not worse.ok
    assert math.isfinite(row.ratio)
