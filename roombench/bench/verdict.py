"""The verdict of one row of `roombench compare`: faster, slower or not significant for a
whole-run ratio new/base, and the test that decided it. It is decided here, before any table
renders it (pyperf's `_compare.py` does the same); bench.compare builds the rows and gives each
its alpha, bench.significance holds the tests themselves (pure numpy, no files read).

* **Repeats** (a sweep with ``repeats >= 2`` on both sides): a two-sided Mann-Whitney U test
  over the repeats' values of that statistic, exact when there are no ties. Why U and not
  pyperf's t-test: a repeat's p99 is skewed and one noisy repeat is common on a shared
  machine; U assumes no distribution and ranks are robust to that outlier. U can only be
  significant with enough repeats (4 + 4 at alpha 0.05, 6 + 6 at a 20-row table's per-row
  alpha, see bench.compare): with fewer, the interval logs decide (every repeat's intervals pooled).
* Neither (too few repeats and no ``.hlog`` files, e.g. results from before interval logs):
  "not significant", and the row's why says so: how many runs there are and how many a U
  test would need.
* **Interval logs** (``<metric>.hlog`` beside summary.json): a block bootstrap of the
  whole-run percentile — resample the run's 1 s intervals in blocks of consecutive ones,
  merge their histograms, take the percentile; 4000 resamples per side, fixed seed. Significant
  when the whole (1 - alpha) interval of new/base lies beyond the minimum effect (below), not
  merely off 1: the interval knows the spread within the runs, not between them. Why this and
  not per-interval percentiles: see bench/significance.py.

Either way a change smaller than ``min_effect`` (25% by default) is "not significant". A
test on one run per side sees only the spread *within* each run, not how much two runs differ
as a whole; on this project's shared 2-core machine two runs of one server differed by up to
~25% in a p50 with every interval agreeing (measured: docs/ci.md), and a gate should not page
anyone for that. With repeats (a sweep), lower it (``--min-effect``). The ratio tested is the row's own (whole-run values, the ones shown and gated),
so a verdict never contradicts the numbers beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from roombench.exceptions import UsageError
from roombench.bench.significance import Sparse, bootstrap_ratio, interval_samples, mann_whitney_p, min_p_exact
from roombench.measure.intervals import iter_hlog

LATENCY_STATS = ("p50", "p90", "p99", "p999")
_PCT = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
#: for a whole table: bench.compare divides it among the rows it tests (Bonferroni)
ALPHA = 0.05
MIN_EFFECT = 0.25
MIN_BLOCKS = 5
#: a percentile is tested only with at least this many samples beyond it on each side: the
#: bootstrap of a tail that few samples make up (a p99.9 of 300 samples is their max) is wrong
MIN_TAIL = 50

Verdict = Literal["faster", "slower", "not significant", "no data", "-"]


@dataclass
class Run:
    """One measured run: its summary and the folder its interval logs are in."""

    summary: dict[str, Any]
    folder: Path


def decide(metric: str, stat: str, b_runs: list[Run], n_runs: list[Run], ratio: float,
           min_effect: float = MIN_EFFECT, alpha: float = ALPHA, boot: IntervalBootstrap | None = None
           ) -> tuple[Verdict, str, str]:
    """(verdict, test, why) for the whole-run ``ratio`` new/base: by the repeats when a U test
    can decide, else by the block bootstrap over the interval logs."""
    bv = [r.summary["latency_ms"][metric][stat] for r in b_runs]
    nv = [r.summary["latency_ms"][metric][stat] for r in n_runs]
    if len(bv) >= 2 and len(nv) >= 2 and None not in bv and None not in nv and \
            min_p_exact(len(bv), len(nv)) < alpha:
        p = mann_whitney_p(bv, nv)
        return _verdict(ratio, p < alpha, min_effect, "mann-whitney-u",
                        f"U test over {len(bv)}+{len(nv)} repeats, p={p:.3g}")
    boot = boot or IntervalBootstrap(metric, b_runs, n_runs, alpha)
    problem = boot.problem()
    if problem is not None:
        return "not significant", problem[0], problem[1]
    tail = boot.too_few_samples(_PCT[stat])
    if tail:
        return "not significant", "bootstrap", tail
    lo, hi = boot.interval(_PCT[stat])
    why = f"block bootstrap over {boot.sizes}: {100 * (1 - alpha):.4g}% {lo:.2f}..{hi:.2f}"
    # the interval holds the spread within the runs, not between them, which the minimum
    # effect stands for: the whole interval must clear it (a 1.26x row with 1.10..1.40 was
    # two runs of one server, one after the other)
    if lo > 1.0 + min_effect or hi < 1.0 - min_effect:
        return ("slower" if lo > 1.0 else "faster"), "bootstrap", why
    if lo > 1.0 or hi < 1.0:
        return "not significant", "bootstrap", f"{why}; under the {100 * min_effect:g}% minimum effect (not all of it beyond)"
    return "not significant", "bootstrap", why


def _verdict(ratio: float, significant: bool, min_effect: float, test: str, why: str) -> tuple[Verdict, str, str]:
    if not significant:
        return "not significant", test, why
    if abs(ratio - 1.0) < min_effect:
        return "not significant", test, f"{why}; under the {100 * min_effect:g}% minimum effect"
    return ("slower" if ratio > 1 else "faster"), test, why


def repeats_needed(alpha: float) -> int:
    """Repeats per side a U test needs to be significant at ``alpha`` at all."""
    n = 2
    while min_p_exact(n, n) >= alpha:
        n += 1
    return n


def min_intervals() -> int:
    """Intervals a side needs for MIN_BLOCKS blocks (blocks of about n^(1/3) intervals)."""
    n = MIN_BLOCKS
    while math.ceil(n / max(1, round(n ** (1 / 3)))) < MIN_BLOCKS:
        n += 1
    return n


class IntervalBootstrap:
    """One metric's interval logs of both sides, read on first use; the (1 - alpha) interval of the
    whole-run percentile ratio per percentile (bench.significance)."""

    def __init__(self, metric: str, b_runs: list[Run], n_runs: list[Run], alpha: float = ALPHA) -> None:
        self.metric, self.b_runs, self.n_runs, self.alpha = metric, b_runs, n_runs, alpha
        self._problem: tuple[str, str] | None = None  # (test, why) when it cannot decide
        self._samples: Any = None
        self._ci: dict[float, tuple[float, float]] = {}
        self.sizes = ""
        self.counts = (0, 0)

    def problem(self) -> tuple[str, str] | None:
        """Read the logs (once); (test, why) if they cannot decide, else None."""
        if self._samples is None and self._problem is None:
            b, n = _interval_histograms(self.b_runs, self.metric), _interval_histograms(self.n_runs, self.metric)
            if b is None or n is None:
                need = repeats_needed(self.alpha)
                self._problem = ("", f"too few runs: {len(self.b_runs)}+{len(self.n_runs)} (a U test needs "
                                     f"{need}+{need} at this table's alpha) and no interval logs")
                return self._problem
            nb, nn = sum(1 for h in b if h.total), sum(1 for h in n if h.total)
            need = min_intervals()
            if nb < need or nn < need:
                self._problem = ("bootstrap", f"too few intervals ({nb}, {nn}; {need} needed)")
                return self._problem
            self.sizes = f"{nb}+{nn} intervals"
            self.counts = (sum(h.total for h in b), sum(h.total for h in n))
            self._samples = interval_samples(b, n)
        return self._problem

    def too_few_samples(self, pct: float) -> str:
        """Why ``pct`` cannot be tested with these samples ("" when it can)."""
        need = math.ceil(round(MIN_TAIL / (1 - pct / 100), 6))  # round: 50 / 0.001 is 50000.0000001
        if min(self.counts) < need:
            return (f"too few samples for a p{pct:g} test ({self.counts[0]}, {self.counts[1]}; {need} needed, "
                    f"{MIN_TAIL} beyond it)")
        return ""

    def interval(self, pct: float) -> tuple[float, float]:
        """(2.5%, 97.5%) of new/base at ``pct``; call problem() first."""
        if not self._ci:
            base, new, values = self._samples
            self._ci = bootstrap_ratio(base, new, values, list(_PCT.values()), alpha=self.alpha)
        return self._ci[pct]


def _interval_histograms(runs: list[Run], metric: str) -> list[Sparse] | None:
    """Every interval of ``metric`` over all repeats, sparse; None when a run has no log."""
    out: list[Sparse] = []
    for r in runs:
        path = r.folder / f"{metric}.hlog"
        if not path.is_file():
            return None
        try:
            out += [Sparse.of(h) for _start, h in iter_hlog(path)]
        except Exception as exc:  # hdrh raises bare errors on a damaged log: one line, exit 2
            raise UsageError(f"{path}: unreadable interval log ({type(exc).__name__}: {exc})") from None
    return out
