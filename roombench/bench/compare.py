"""`roombench compare BASE NEW`: per metric and percentile, base vs new, ratio and a verdict;
`--fail-on` gates on it.

Each side is a summary.json, a run folder or a sweep folder (matched by variant and step).
The verdict (faster / slower / not significant) is decided here, before any table renders
it (pyperf's `_compare.py` does the same):

* **Repeats** (a sweep with ``repeats >= 2`` on both sides): a two-sided Mann-Whitney U test
  over the repeats' values of that statistic, exact when there are no ties. Why U and not
  pyperf's t-test: a repeat's p99 is skewed and one noisy repeat is common on a shared
  machine; U assumes no distribution and ranks are robust to that outlier. U can only be
  significant with enough repeats (4 + 4 at alpha 0.05): with fewer, the interval logs decide.
* **Interval logs** (``<metric>.hlog`` beside summary.json): each 1 s interval's own
  percentile; a bootstrap (2000 resamples of each side's intervals, fixed seed) of the ratio of
  the *medians* of those per-interval percentiles. Significant when the 95% interval of the
  ratio excludes 1. The median, so that one bad second (a GC pause, a neighbour's burst)
  does not decide a whole run; intervals are resampled whole, so samples that queued behind
  one another stay together.

Either way a change smaller than ``min_effect`` (10% by default) is "not significant":
two runs of one server on one machine differ by about that, and a gate should not page
anyone for it. And the row's own ratio (whole-run value, the one shown and gated) must point
the same way and pass ``min_effect`` too, else the row is "not significant" with both reasons:
a verdict must never contradict the numbers beside it.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from roombench.exceptions import UsageError
from roombench.measure.metrics import METRICS, Metrics, percentiles
from roombench.measure.summary import load_summary, parse_slo

LATENCY_STATS = ("p50", "p90", "p99", "p999")
_PCT = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
COUNTS = ("sent", "acked", "ack_timeouts", "live_missed", "recovered", "lost", "duplicates", "out_of_order")
ALPHA = 0.05
MIN_EFFECT = 0.10
BOOTSTRAP = 2000
MIN_INTERVALS = 5

Verdict = Literal["faster", "slower", "not significant", "no data", "-"]


@dataclass
class Run:
    """One measured run: its summary and the folder its interval logs are in."""

    summary: dict[str, Any]
    folder: Path


@dataclass
class Side:
    """One side of a comparison: every key (``""`` for a run, ``<variant> step <i>`` in a sweep)
    with its repeats."""

    path: Path
    runs: dict[str, list[Run]]


@dataclass(frozen=True)
class Row:
    """One line of the table: a latency statistic (with verdict) or a count (verdict "-")."""

    key: str
    metric: str
    stat: str
    base: float | None
    new: float | None
    ratio: float | None
    verdict: Verdict
    test: str
    why: str

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.stat}" if self.stat else self.metric


@dataclass(frozen=True)
class Gate:
    """A --fail-on expression: ``ack.p99>+10%`` (relative to the base), ``ack.p99>+5`` (ms over
    the base), ``lost>0`` or ``ack.p99>50`` (absolute, on the new side). The gate *fails* when
    the expression is true; a relative one only when the change is also significant."""

    expr: str
    name: str
    stat: str | None
    op: str
    limit: float
    relative: Literal["", "%", "delta"]

    def check(self, rows: list[Row], new: dict[str, dict[str, Any]]) -> list[GateResult]:
        """One result per key the comparison has."""
        out = []
        for key, summary in new.items():
            if self.relative:
                row = next((r for r in rows if r.key == key and r.metric == self.name
                            and r.stat == (self.stat or "p99")), None)
                out.append(self._relative(key, row))
            else:
                value = parse_slo(f"{self.name}{'.' + self.stat if self.stat else ''}>=0").value(summary)
                failed = value is None or _OPS[self.op](value, self.limit)
                out.append(GateResult(self, key, value, not failed,
                                      f"{self.name_stat} = {_num(value)} (fails when {self.op} {self.limit:g})"))
        return out

    @property
    def name_stat(self) -> str:
        return self.name + (f".{self.stat}" if self.stat else "")

    def _relative(self, key: str, row: Row | None) -> GateResult:
        if row is None or row.base is None or row.new is None:
            return GateResult(self, key, None, False, f"{self.name_stat}: no samples on one side")
        change = (row.new / row.base - 1) * 100 if self.relative == "%" else row.new - row.base
        unit = "%" if self.relative == "%" else " ms"
        hit = _OPS[self.op](change, self.limit)
        significant = row.verdict in ("faster", "slower")
        ok = not (hit and significant)
        detail = (f"{self.name_stat} {_num(row.base)} -> {_num(row.new)} ms ({change:+.1f}{unit}; "
                  f"{row.verdict}: {row.why})")
        return GateResult(self, key, change, ok, detail)


@dataclass(frozen=True)
class GateResult:
    """A gate's outcome for one key; ``value`` is what it measured (a change for relative gates)."""

    gate: Gate
    key: str
    value: float | None
    ok: bool
    detail: str

    @property
    def name(self) -> str:
        return f"{self.gate.expr} [{self.key}]" if self.key else self.gate.expr

    def line(self) -> str:
        return f"gate {self.name}: {'PASS' if self.ok else 'FAIL'} ({self.detail})"


@dataclass
class Comparison:
    """The decided comparison: rows, then gate results; renderers only format it."""

    base: Side
    new: Side
    rows: list[Row]
    gates: list[GateResult] = field(default_factory=list)
    min_effect: float = MIN_EFFECT
    #: what makes the numbers less comparable (a saturated generator, another host)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(g.ok for g in self.gates)

    @property
    def keyed(self) -> bool:
        """Whether rows need their key shown (a sweep's variant and step)."""
        return any(r.key for r in self.rows) or any(g.key for g in self.gates)


_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_GATE_RE = re.compile(r"^\s*([a-z_]+)(?:\.([a-z0-9_]+))?\s*(<=|>=|==|!=|<|>)\s*([+-])?\s*([0-9]+(?:\.[0-9]+)?)\s*(%|ms)?\s*$")


def parse_gate(expr: str) -> Gate:
    """Parse a --fail-on expression; UsageError (one line) names what is wrong."""
    m = _GATE_RE.match(expr)
    if not m:
        raise UsageError(f"bad --fail-on {expr!r}: expected e.g. 'ack.p99>+10%', 'ack.p99>+5ms', 'lost>0'")
    name, stat, op, sign, number, unit = m.groups()
    parse_slo(f"{name}{'.' + stat if stat else ''}{op}0")  # the name and stat, checked like --slo
    relative: Literal["", "%", "delta"] = "%" if unit == "%" else ("delta" if sign else "")
    if relative and name not in METRICS:
        raise UsageError(f"bad --fail-on {expr!r}: a relative gate (+N% or +N ms) needs a latency metric "
                         f"({', '.join(METRICS)})")
    if relative and stat not in (None, *LATENCY_STATS):
        raise UsageError(f"bad --fail-on {expr!r}: relative gates compare {', '.join(LATENCY_STATS)}")
    limit = float(number) * (-1 if sign == "-" else 1)
    return Gate(expr.strip(), name, stat, op, limit, relative)


def load_side(path: str | Path) -> Side:
    """A summary.json, a run folder (summary.json inside) or a sweep folder (run.json inside)."""
    p = Path(path)
    if p.is_file():
        return Side(p, {"": [Run(load_summary(p), p.parent)]})
    if (p / "summary.json").is_file():
        return Side(p, {"": [Run(load_summary(p / "summary.json"), p)]})
    if (p / "run.json").is_file():
        from roombench.bench.report import load

        sw = load(p)
        runs: dict[str, list[Run]] = {}
        for r in sw.results:
            runs.setdefault(f"{r.variant} step {r.step}", []).append(
                Run(r.summary, p / r.variant / f"s{r.step}-r{r.repeat}"))
        if not runs:
            raise UsageError(f"{p}: the sweep has no finished step to compare")
        return Side(p, runs)
    raise UsageError(f"{p}: not a summary.json nor a result folder (no summary.json or run.json in it)")


def pair_keys(base: Side, new: Side) -> list[tuple[str, str]]:
    """(base key, new key) pairs: the keys both have, or the only one of each."""
    if len(base.runs) == 1 and len(new.runs) == 1:
        return [(next(iter(base.runs)), next(iter(new.runs)))]
    common = [k for k in new.runs if k in base.runs]
    if not common:
        raise UsageError(f"{base.path} and {new.path} share no variant and step "
                         f"(base: {', '.join(base.runs)}; new: {', '.join(new.runs)})")
    return [(k, k) for k in common]


def merged(runs: list[Run]) -> dict[str, Any]:
    """One summary over repeats: histograms merged (percentiles over all samples), counts added."""
    if len(runs) == 1:
        return runs[0].summary
    m = Metrics()
    for r in runs:
        m.merge(Metrics.decode(r.summary["histograms"]))
    first = runs[0].summary
    delivery = {k: sum(r.summary["delivery"].get(k, 0) for r in runs) for k in first["delivery"]}
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r.summary["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {**first, "latency_ms": m.summary(), "delivery": delivery, "errors": errors}


def compare(base_path: str | Path, new_path: str | Path, gates: list[Gate] | None = None,
            min_effect: float = MIN_EFFECT) -> Comparison:
    """Load both sides, decide every row, evaluate the gates."""
    base, new = load_side(base_path), load_side(new_path)
    rows: list[Row] = []
    new_summaries: dict[str, dict[str, Any]] = {}
    for bkey, nkey in pair_keys(base, new):
        b_runs, n_runs = base.runs[bkey], new.runs[nkey]
        b_sum, n_sum = merged(b_runs), merged(n_runs)
        new_summaries[nkey] = n_sum
        for metric in METRICS:
            if not (b_sum["latency_ms"][metric]["count"] or n_sum["latency_ms"][metric]["count"]):
                continue
            for stat in LATENCY_STATS:
                rows.append(_latency_row(nkey, metric, stat, b_runs, n_runs, b_sum, n_sum, min_effect))
        for count in COUNTS:
            b, n = b_sum["delivery"].get(count, 0), n_sum["delivery"].get(count, 0)
            rows.append(Row(nkey, count, "", b, n, None, "-", "", "a count"))
        b_err, n_err = sum(b_sum["errors"].values()), sum(n_sum["errors"].values())
        rows.append(Row(nkey, "errors", "", b_err, n_err, None, "-", "", "a count"))
    results = [res for g in gates or [] for res in g.check(rows, new_summaries)]
    return Comparison(base, new, rows, results, min_effect, _notes(base, new))


def _notes(base: Side, new: Side) -> list[str]:
    notes = []
    for label, side in (("base", base), ("new", new)):
        for key, runs in side.runs.items():
            for r in runs:
                why = r.summary["metadata"].get("generator", {}).get("saturation") or []
                if why:
                    notes.append(f"{label} {key + ' ' if key else ''}generator saturated "
                                 f"(its latencies include its own queueing): {why[0]}")
                    break
    hosts = {str(r.summary["metadata"].get("host")) for s in (base, new) for runs in s.runs.values() for r in runs}
    if len(hosts) > 1:
        notes.append("base and new ran on different hosts: a ratio says as much about the machines")
    return notes


def _latency_row(key: str, metric: str, stat: str, b_runs: list[Run], n_runs: list[Run],
                 b_sum: dict[str, Any], n_sum: dict[str, Any], min_effect: float) -> Row:
    b, n = b_sum["latency_ms"][metric][stat], n_sum["latency_ms"][metric][stat]
    if b is None or n is None:
        return Row(key, metric, stat, b, n, None, "no data", "", "no samples on one side")
    ratio = n / b if b > 0 else math.inf
    verdict, test, why = decide(metric, stat, b_runs, n_runs, min_effect)
    if verdict in ("slower", "faster") and ((ratio > 1) != (verdict == "slower") or abs(ratio - 1) < min_effect):
        # the test says one thing, the run's own number (the one shown and gated) another:
        # no verdict a reader could not check against the table
        verdict, why = "not significant", f"{why}; but the run's {stat} differs by {100 * (ratio - 1):+.0f}%"
    return Row(key, metric, stat, b, n, ratio, verdict, test, why)


def decide(metric: str, stat: str, b_runs: list[Run], n_runs: list[Run],
           min_effect: float = MIN_EFFECT) -> tuple[Verdict, str, str]:
    """(verdict, test, why): by repeats when U can decide, else by the interval logs."""
    bv = [r.summary["latency_ms"][metric][stat] for r in b_runs]
    nv = [r.summary["latency_ms"][metric][stat] for r in n_runs]
    if len(bv) >= 2 and len(nv) >= 2 and None not in bv and None not in nv and \
            min_p_exact(len(bv), len(nv)) < ALPHA:
        p = mann_whitney_p(bv, nv)
        ratio = float(np.median(nv)) / max(float(np.median(bv)), 1e-9)
        return _verdict(ratio, p < ALPHA, min_effect, "mann-whitney-u",
                        f"U test over {len(bv)}+{len(nv)} repeats, p={p:.3g}")
    b_iv, n_iv = _interval_values(b_runs, metric, stat), _interval_values(n_runs, metric, stat)
    if b_iv is None or n_iv is None:
        return "not significant", "", "no repeats (4+4 needed for a U test) and no interval logs"
    if len(b_iv) < MIN_INTERVALS or len(n_iv) < MIN_INTERVALS:
        return "not significant", "bootstrap", f"too few intervals ({len(b_iv)}, {len(n_iv)}; {MIN_INTERVALS} needed)"
    lo, mid, hi = bootstrap_ratio(b_iv, n_iv)
    return _verdict(mid, lo > 1.0 or hi < 1.0, min_effect, "bootstrap",
                    f"bootstrap over {len(b_iv)}+{len(n_iv)} intervals: median ratio {mid:.2f} "
                    f"(95% {lo:.2f}..{hi:.2f})")


def _verdict(ratio: float, significant: bool, min_effect: float, test: str, why: str) -> tuple[Verdict, str, str]:
    if not significant:
        return "not significant", test, why
    if abs(ratio - 1.0) < min_effect:
        return "not significant", test, f"{why}; under the {100 * min_effect:g}% minimum effect"
    return ("slower" if ratio > 1 else "faster"), test, why


def _interval_values(runs: list[Run], metric: str, stat: str) -> list[float] | None:
    """Per-interval percentile (ms) of every interval with samples, over all repeats; None
    when a run has no interval log for the metric."""
    from roombench.measure.intervals import read_hlog

    values: list[float] = []
    for r in runs:
        path = r.folder / f"{metric}.hlog"
        if not path.is_file():
            return None
        for _start, h in read_hlog(path):
            if h.total_count:
                values.append(percentiles(h, [_PCT[stat]])[_PCT[stat]] / 1000.0)
    return values


def bootstrap_ratio(base: list[float], new: list[float], n: int = BOOTSTRAP, seed: int = 0
                    ) -> tuple[float, float, float]:
    """(2.5%, observed, 97.5%) of median(new) / median(base), resampling each side's values."""
    rng = np.random.default_rng(seed)
    b, nw = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    bm = np.median(b[rng.integers(0, len(b), (n, len(b)))], axis=1)
    nm = np.median(nw[rng.integers(0, len(nw), (n, len(nw)))], axis=1)
    ratios = nm / np.maximum(bm, 1e-9)
    mid = float(np.median(nw)) / max(float(np.median(b)), 1e-9)
    return float(np.quantile(ratios, 0.025)), mid, float(np.quantile(ratios, 0.975))


def min_p_exact(n1: int, n2: int) -> float:
    """The smallest two-sided p an exact U test of these sizes can give."""
    return 2.0 / math.comb(n1 + n2, n1)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test: exact without ties (small samples), else the
    normal approximation with tie correction and continuity correction."""
    n1, n2 = len(a), len(b)
    pooled = sorted((v, i) for i, v in enumerate([*a, *b]))
    ranks = [0.0] * (n1 + n2)
    i = 0
    ties = 0.0
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
    mu = n1 * n2 / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (abs(u - mu) - 0.5) / sigma
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _u_distribution(n1: int, n2: int) -> list[int]:
    """Counts of arrangements per U value (0..n1*n2), by the usual recurrence."""
    # f[m][n][u] = f[m-1][n][u-n] + f[m][n-1][u]; keep one 2-D table per m
    prev = [[1] + [0] * (n1 * n2) for _ in range(n2 + 1)]  # m = 0: U = 0 only
    for m in range(1, n1 + 1):
        cur = [[0] * (n1 * n2 + 1) for _ in range(n2 + 1)]
        cur[0][0] = 1
        for n in range(1, n2 + 1):
            for u in range(n1 * n2 + 1):
                cur[n][u] = (prev[n][u - n] if u >= n else 0) + cur[n - 1][u]
        prev = cur
    return prev[n2]


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(int(v))


def format_table(c: Comparison) -> str:
    """The text table `roombench compare` prints (just the gates when there are no rows)."""
    lines = []
    key_w = max((len(r.key) for r in c.rows), default=0) + 2 if c.keyed else 0
    if c.rows:
        lines += [f"base: {c.base.path}", f"new:  {c.new.path}",
                  f"{'':<{key_w}}{'metric':<18}{'base':>10}{'new':>10}{'ratio':>8}  verdict"]
    for r in c.rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None and math.isfinite(r.ratio) else "-"
        why = f"  ({r.why})" if r.verdict in ("faster", "slower") else ""
        lines.append(f"{r.key:<{key_w}}{r.name:<18}{_num(r.base):>10}{_num(r.new):>10}{ratio:>8}  {r.verdict}{why}")
    tests = sorted({r.test for r in c.rows if r.test})
    if tests:
        lines.append("verdicts by: " + ", ".join(tests) + f" (alpha {ALPHA}, changes under {100 * c.min_effect:g}% "
                     "are not significant)")
    lines += [f"note: {n}" for n in c.notes]
    lines += [g.line() for g in c.gates]
    return "\n".join(lines)
