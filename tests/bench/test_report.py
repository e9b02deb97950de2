"""The report's comparison decision, apart from any rendering."""

from __future__ import annotations

import pytest

from roombench.bench.report import Comparison, decide


@pytest.mark.parametrize("base,other,verdict,ratio", [
    ([10.0, 12.0], [20.0, 24.0], "slower", 20.0 / 12.0),
    ([20.0, 24.0], [10.0, 12.0], "faster", 20.0 / 12.0),
    ([10.0, 12.0], [11.0, 30.0], "not significant", None),  # ranges overlap
    ([10.0], [50.0], "not significant", None),  # one repeat: no spread to judge by
    ([10.0, 12.0], [None, None], "no data", None),
])
def test_decide(base: list[float | None], other: list[float | None], verdict: str, ratio: float | None) -> None:
    got = decide(base, other)
    assert got[0] == verdict
    assert got[1] == pytest.approx(ratio) if ratio is not None else got[1] is None
    assert got[2]


def test_comparison_renders_the_decision() -> None:
    slower = Comparison("node", "py", "ack", "p99", "slower", 1.5, "every repeat above the baseline's")
    assert slower.line() == "node vs py: ack p99 1.50x slower"
    overlap = Comparison("node", "py", "ack", "p99", "not significant", None, "ranges overlap")
    assert overlap.line() == "node vs py: ack p99 not significant (ranges overlap)"
    assert Comparison("node", "py", "fanout", "p99", "no data", None, "").line() == "node vs py: fanout p99: no data"
