"""The two tests `roombench compare` decides with (pure numpy; no scipy dependency).

* :func:`mann_whitney_p`: two-sided Mann-Whitney U over repeats' values.
* :class:`IntervalSample` + :func:`bootstrap_ratio`: a block bootstrap of a whole-run
  percentile from a run's interval histograms (``<metric>.hlog``).

Why a block bootstrap of the *whole-run* percentile, not of per-interval percentiles: a 1 s
interval of 50 acks has no p99 of its own (it is that second's max), so per-interval p99s
are mostly noise, and their median is not the number the table shows and the gate checks.
Resampling whole intervals and merging their histograms gives the spread of exactly that
number (the run's p99) under "the run could have had other seconds like these". Blocks of
several consecutive intervals (about n^(1/3), Carlstein's non-overlapping blocks) keep a
disturbance that lasts a few seconds (a neighbour's burst on a shared machine, a GC storm)
together, so the spread is not understated by pretending the seconds are independent. One
bad second then widens the interval instead of deciding the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

from roombench.measure.metrics import new_histogram

#: resamples: enough for the 0.1% tails a Bonferroni-corrected table asks for
BOOTSTRAP = 4000
SEED = 0


def min_p_exact(n1: int, n2: int) -> float:
    """The smallest two-sided p an exact U test of these sizes can give."""
    return 2.0 / math.comb(n1 + n2, n1)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test: exact without ties (small samples), else the
    normal approximation with tie correction and continuity correction."""
    n1, n2 = len(a), len(b)
    pooled = sorted((v, i) for i, v in enumerate([*a, *b]))
    ranks = [0.0] * (n1 + n2)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[pooled[k][1]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    if ties == 0 and n1 + n2 <= 40:
        dist = _u_distribution(n1, n2)
        total = sum(dist)
        low = sum(dist[: int(u) + 1]) / total
        high = sum(dist[int(u):]) / total
        return min(1.0, 2 * min(low, high))
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _u_distribution(n1: int, n2: int) -> list[int]:
    """Arrangements per U value (0..n1*n2): f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u)."""
    prev = [[1] + [0] * (n1 * n2) for _ in range(n2 + 1)]  # m = 0: only U = 0
    for _m in range(1, n1 + 1):
        cur = [[0] * (n1 * n2 + 1) for _ in range(n2 + 1)]
        cur[0][0] = 1
        for n in range(1, n2 + 1):
            for u in range(n1 * n2 + 1):
                cur[n][u] = (prev[n][u - n] if u >= n else 0) + cur[n - 1][u]
        prev = cur
    return prev[n2]


@dataclass
class IntervalSample:
    """One side's intervals of one metric as a counts matrix over the buckets either side used."""

    counts: np.ndarray  # (intervals, buckets), int64

    @property
    def intervals(self) -> int:
        return int(self.counts.shape[0])


@dataclass(frozen=True)
class Sparse:
    """One interval histogram's non-empty buckets (a dense one is ~188 KB: a 10-minute run's
    600 of them must not all be held at once)."""

    idx: np.ndarray  # bucket indices, int64
    counts: np.ndarray  # their counts, int64

    @classmethod
    def of(cls, h: HdrHistogram) -> Sparse:
        dense = np.ctypeslib.as_array(h.counts)[: h.counts_len]
        idx = np.flatnonzero(dense)
        return cls(idx.astype(np.int64), dense[idx].astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def interval_samples(base: list[Sparse], new: list[Sparse]) -> tuple[IntervalSample, IntervalSample, np.ndarray]:
    """Both sides' non-empty intervals on one shared bucket axis (the buckets either side
    used), and each bucket's value in µs: its highest equivalent value, as
    measure.metrics.percentiles reports."""
    base, new = [s for s in base if s.total], [s for s in new if s.total]
    used = np.unique(np.concatenate([s.idx for s in [*base, *new]] or [np.zeros(0, dtype=np.int64)]))

    def matrix(side: list[Sparse]) -> np.ndarray:
        m = np.zeros((len(side), len(used)), dtype=np.int64)
        for row, s in enumerate(side):
            m[row, np.searchsorted(used, s.idx)] = s.counts
        return m

    ref = new_histogram()
    values = np.array([ref.get_highest_equivalent_value(ref.get_value_from_index(int(i))) for i in used],
                      dtype=np.float64)
    return IntervalSample(matrix(base)), IntervalSample(matrix(new)), values


def _blocks(sample: IntervalSample) -> np.ndarray:
    """Cumulative bucket counts of each block of about n^(1/3) consecutive intervals: (blocks, buckets)."""
    rows = sample.intervals
    k = max(1, round(rows ** (1 / 3)))
    return np.cumsum(np.vstack([sample.counts[i:i + k].sum(axis=0) for i in range(0, rows, k)]), axis=1)


def _weights(blocks: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each block is drawn in each of ``n`` resamples (with replacement): (n, blocks)."""
    picks = rng.integers(0, blocks, (n, blocks))
    weights = np.zeros((n, blocks), dtype=np.int64)
    np.add.at(weights, (np.arange(n)[:, None], picks), 1)
    return weights


def _percentile_resampled(weights: np.ndarray, cum: np.ndarray, values: np.ndarray, pct: float) -> np.ndarray:
    """Per resample, the value at ``pct`` of the merged histogram (hdrh's target count rule).
    A resample's cumulative counts are ``weights @ cum``; a binary search over the buckets
    evaluates only the columns it needs, so no (resamples x buckets) matrix is ever built."""
    total = weights @ cum[:, -1]
    target = np.maximum((pct * total / 100 + 0.5).astype(np.int64), 1)
    lo = np.zeros(len(weights), dtype=np.int64)
    hi = np.full(len(weights), cum.shape[1] - 1, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        below = (weights * cum[:, mid].T).sum(axis=1) < target
        lo, hi = np.where(below, mid + 1, lo), np.where(below, hi, mid)
    return values[lo]


def bootstrap_ratio(base: IntervalSample, new: IntervalSample, values: np.ndarray, pcts: list[float],
                    n: int = BOOTSTRAP, seed: int = SEED, alpha: float = 0.05) -> dict[float, tuple[float, float]]:
    """pct -> the (alpha/2, 1 - alpha/2) quantiles of new/base whole-run percentile under the
    block bootstrap; fixed seed, so the same folders always give the same verdicts."""
    rng = np.random.default_rng(seed)
    cb, cn = _blocks(base), _blocks(new)
    wb, wn = _weights(len(cb), rng, n), _weights(len(cn), rng, n)
    out = {}
    for pct in pcts:
        ratio = (_percentile_resampled(wn, cn, values, pct)
                 / np.maximum(_percentile_resampled(wb, cb, values, pct), 1e-9))
        out[pct] = (float(np.quantile(ratio, alpha / 2)), float(np.quantile(ratio, 1 - alpha / 2)))
    return out
