"""`roombench compare BASE NEW`: per metric and percentile, base vs new, ratio and a verdict;
`--fail-on` gates on it.

Each side is a summary.json, a run folder or a sweep folder (matched by variant and step).
The verdict (faster / slower / not significant) is decided here, before any table renders
it (pyperf's `_compare.py` does the same):

* **Repeats** (a sweep with ``repeats >= 2`` on both sides): a two-sided Mann-Whitney U test
  over the repeats' values of that statistic, exact when there are no ties. Why U and not
  pyperf's t-test: a repeat's p99 is skewed and one noisy repeat is common on a shared
  machine; U assumes no distribution and ranks are robust to that outlier. U can only be
  significant with enough repeats (4 + 4 at alpha 0.05, 6 + 6 at a 20-row table's per-row
  alpha below): with fewer, the interval logs decide (every repeat's intervals pooled).
* Neither (too few repeats and no ``.hlog`` files, e.g. results from before interval logs):
  "not significant", and the row's why says so: how many runs there are and how many a U
  test would need.
* **Interval logs** (``<metric>.hlog`` beside summary.json): a block bootstrap of the
  whole-run percentile — resample the run's 1 s intervals in blocks of consecutive ones,
  merge their histograms, take the percentile; 4000 resamples per side, fixed seed. Significant
  when the whole (1 - alpha) interval of new/base lies beyond the minimum effect (below), not
  merely off 1: the interval knows the spread within the runs, not between them. Why this and
  not per-interval percentiles: see bench/significance.py.

One table tests some 20 rows; at 5% each, two runs of one server would show a "significant"
row in most comparisons. So alpha is 5% for the whole table (Bonferroni: 0.05 / rows tested
per row), which is what "not significant for every metric" needs.

Either way a change smaller than ``min_effect`` (25% by default) is "not significant". A
test on one run per side sees only the spread *within* each run, not how much two runs differ
as a whole; on this project's shared 2-core machine two runs of one server differed by up to
~25% in a p50 with every interval agreeing (measured: docs/ci.md), and a gate should not page
anyone for that. With repeats (a sweep), lower it (``--min-effect``). The ratio tested is the row's own (whole-run values, the ones shown and gated),
so a verdict never contradicts the numbers beside it.

The same rule decides a sweep's report.md (bench.report: each variant against the first, per
step, through :func:`compare_sides`), so a verdict there is the one `roombench compare` gives
for those two variants' step folders.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from roombench.exceptions import UsageError
from roombench.bench.significance import Sparse, bootstrap_ratio, interval_samples, mann_whitney_p, min_p_exact
from roombench.measure.intervals import iter_hlog
from roombench.measure.metrics import METRICS, Metrics
from roombench.measure.summary import load_summary, parse_slo

LATENCY_STATS = ("p50", "p90", "p99", "p999")
_PCT = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
COUNTS = ("sent", "acked", "ack_timeouts", "live_missed", "recovered", "lost", "duplicates", "out_of_order")
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


@dataclass
class Side:
    """One side of a comparison: every key (``""`` for a run, ``<variant> step <i>`` in a sweep)
    with its repeats."""

    path: Path
    runs: dict[str, list[Run]]
    #: what a report calls this side (a sweep's variant); "" for a path given to compare
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or str(self.path)


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
    #: each row's significance level (ALPHA over the rows tested, Bonferroni)
    alpha: float = ALPHA
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
    try:
        parse_slo(f"{name}{'.' + stat if stat else ''}{op}0")  # the name and stat, checked like --slo
    except UsageError as exc:
        raise UsageError(f"bad --fail-on {expr!r}: {str(exc).split(': ', 1)[-1]}") from None
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
                Run(r.summary, sw.folder_of(r)))
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


def _count(summary: dict[str, Any], metric: str) -> int:
    """Samples of ``metric`` in ``summary`` (0 where an older summary has no such metric)."""
    return int((summary["latency_ms"].get(metric) or {}).get("count", 0))


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
    return compare_sides(load_side(base_path), load_side(new_path), gates, min_effect)


def compare_sides(base: Side, new: Side, gates: list[Gate] | None = None, min_effect: float = MIN_EFFECT,
                  metrics: tuple[str, ...] = METRICS) -> Comparison:
    """Decide every row of two loaded sides and evaluate the gates. ``metrics`` limits the
    latency rows decided (a report that shows two needs no bootstrap of the others); alpha
    stays the whole table's, so each verdict is the one the full comparison gives."""
    rows: list[Row] = []
    new_summaries: dict[str, dict[str, Any]] = {}
    pairs = pair_keys(base, new)
    sums = {(bkey, nkey): (merged(base.runs[bkey]), merged(new.runs[nkey])) for bkey, nkey in pairs}
    tested = sum(len(LATENCY_STATS) for b_sum, n_sum in sums.values() for metric in METRICS
                 if _count(b_sum, metric) and _count(n_sum, metric))
    alpha = ALPHA / max(tested, 1)
    for bkey, nkey in pairs:
        b_runs, n_runs = base.runs[bkey], new.runs[nkey]
        b_sum, n_sum = sums[bkey, nkey]
        new_summaries[nkey] = n_sum
        for metric in metrics:
            # a summary from before a metric existed (an older baseline) has no row for it
            if metric not in b_sum["latency_ms"] or metric not in n_sum["latency_ms"]:
                continue
            if not (_count(b_sum, metric) or _count(n_sum, metric)):
                continue
            rows += _latency_rows(nkey, metric, b_runs, n_runs, b_sum, n_sum, min_effect, alpha)
        for count in COUNTS:
            b, n = b_sum["delivery"].get(count, 0), n_sum["delivery"].get(count, 0)
            rows.append(Row(nkey, count, "", b, n, None, "-", "", "a count"))
        b_err, n_err = sum(b_sum["errors"].values()), sum(n_sum["errors"].values())
        rows.append(Row(nkey, "errors", "", b_err, n_err, None, "-", "", "a count"))
    results = [res for g in gates or [] for res in g.check(rows, new_summaries)]
    return Comparison(base, new, rows, results, min_effect, alpha, _notes(base, new))


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


def _latency_rows(key: str, metric: str, b_runs: list[Run], n_runs: list[Run], b_sum: dict[str, Any],
                  n_sum: dict[str, Any], min_effect: float, alpha: float) -> list[Row]:
    """One row per percentile of one metric (the interval logs are read once for all four)."""
    boot = _Bootstrap(metric, b_runs, n_runs, alpha)
    rows = []
    for stat in LATENCY_STATS:
        b, n = b_sum["latency_ms"][metric][stat], n_sum["latency_ms"][metric][stat]
        if b is None or n is None:
            rows.append(Row(key, metric, stat, b, n, None, "no data", "", "no samples on one side"))
            continue
        ratio = n / b if b > 0 else math.inf
        verdict, test, why = decide(metric, stat, b_runs, n_runs, ratio, min_effect, alpha, boot)
        rows.append(Row(key, metric, stat, b, n, ratio, verdict, test, why))
    return rows


def decide(metric: str, stat: str, b_runs: list[Run], n_runs: list[Run], ratio: float,
           min_effect: float = MIN_EFFECT, alpha: float = ALPHA, boot: _Bootstrap | None = None
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
    boot = boot or _Bootstrap(metric, b_runs, n_runs, alpha)
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


class _Bootstrap:
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
        lines.append("verdicts by: " + ", ".join(tests) + f" (alpha {ALPHA:g} for the table: {c.alpha:.2g} per row; "
                     f"changes under {100 * c.min_effect:g}% "
                     "are not significant)")
    lines += [f"note: {n}" for n in c.notes]
    lines += [g.line() for g in c.gates]
    return "\n".join(lines)
