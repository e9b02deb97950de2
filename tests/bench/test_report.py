"""The sweep report's verdicts: bench.compare's rule, on sweep folders with known samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from roombench.bench.compare import compare
from roombench.bench.report import comparisons, load, verdict_lines, write_report

from tests.bench.fakes import fake_sweep


def test_single_runs_are_decided_by_their_interval_logs(tmp_path: Path) -> None:
    folder = fake_sweep(tmp_path / "sw", {"py": [2.0], "node": [4.0], "same": [2.0], "fast": [1.0]})
    sw = load(folder)
    lines = verdict_lines(sw, 0)
    ack = [line for line in lines if ": ack p99" in line or " ack p99 " in line]
    assert len(lines) == 6 and len(ack) == 3  # ack and fanout per variant; no fanout samples here
    slower, same, faster = ack
    m = re.match(r"node vs py: ack p99 (\d\.\d\d)x slower \(\S+ -> \S+ ms; block bootstrap over 20\+20 intervals",
                 slower)
    assert m and float(m.group(1)) == pytest.approx(2.0, rel=0.15), slower
    assert same.startswith("same vs py: ack p99 not significant (") and "block bootstrap" in same, same
    m = re.match(r"fast vs py: ack p99 (\d\.\d\d)x faster", faster)  # said as times faster, not 0.5x
    assert m and float(m.group(1)) == pytest.approx(2.0, rel=0.15), faster
    assert "node vs py: fanout p99: no data (no samples on either side)" in lines
    # the very verdict `roombench compare` gives for the two step folders
    row = next(r for r in comparisons(sw, 0)[0].rows if (r.metric, r.stat) == ("ack", "p99"))
    alone = next(r for r in compare(folder / "py" / "s0-r0", folder / "node" / "s0-r0").rows
                 if (r.metric, r.stat) == ("ack", "p99"))
    assert (row.verdict, row.test, row.why) == (alone.verdict, alone.test, alone.why) == \
        ("slower", "bootstrap", alone.why)


def test_single_runs_without_logs_say_too_few_runs(tmp_path: Path) -> None:
    sw = load(fake_sweep(tmp_path / "sw", {"py": [2.0], "node": [6.0]}, logs=False))
    line = verdict_lines(sw, 0)[0]
    assert line.startswith("node vs py: ack p99 not significant (")
    assert "too few runs: 1+1 (a U test needs 5+5 at this table's alpha) and no interval logs" in line, line


def test_enough_repeats_decide_by_u_test(tmp_path: Path) -> None:
    """5 + 5 repeats, every node repeat slower: exact U p = 2/252 < 0.05/4 (4 ack rows tested)."""
    sw = load(fake_sweep(tmp_path / "sw", {"py": [2.0, 2.1, 2.2, 2.3, 2.4], "node": [3.0, 3.1, 3.2, 3.3, 3.4]},
                         intervals=3, logs=False))
    line = verdict_lines(sw, 0)[0]
    assert re.match(r"node vs py: ack p99 1\.\d\dx slower \(.*U test over 5\+5 repeats, p=0\.00794\)", line), line


def test_ranges_apart_by_less_than_the_minimum_effect_are_not_significant(tmp_path: Path) -> None:
    """The old rule called this "slower" (every repeat above the baseline's); under compare's
    it is a change under the 25% minimum effect."""
    sw = load(fake_sweep(tmp_path / "sw", {"py": [2.0, 2.05], "node": [2.3, 2.35]}))
    line = verdict_lines(sw, 0)[0]
    assert line.startswith("node vs py: ack p99 not significant (") and "under the 25% minimum effect" in line, line
    assert "block bootstrap over 40+40 intervals" in line  # 2 repeats: too few for U, their logs pooled


def test_report_md_carries_the_verdicts_and_the_rule(tmp_path: Path) -> None:
    sw = load(fake_sweep(tmp_path / "sw", {"py": [2.0], "node": [4.0]}))
    text = write_report(sw, [], 0).read_text()
    assert "decided as `roombench compare` decides" in text
    assert re.search(r"^- node vs py: ack p99 \d\.\d\dx slower \(", text, re.M), text
