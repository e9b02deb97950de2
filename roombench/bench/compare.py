"""`roombench compare BASE NEW`: per metric and percentile, base vs new, ratio and a verdict;
`--fail-on` gates on it.

Each side is a summary.json, a run folder or a sweep folder (matched by variant and step).
Every latency row's verdict (faster / slower / not significant) is bench.verdict's: a U test
over repeats, else a block bootstrap over the interval logs, and a minimum effect; it is
decided before any table renders it (pyperf's `_compare.py` does the same).

One table tests some 20 rows; at 5% each, two runs of one server would show a "significant"
row in most comparisons. So alpha is 5% for the whole table (Bonferroni: 0.05 / rows tested
per row), which is what "not significant for every metric" needs.

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
from roombench.bench.verdict import ALPHA, LATENCY_STATS, MIN_EFFECT, IntervalBootstrap, Run, Verdict, decide
from roombench.measure.metrics import METRICS, Metrics
from roombench.measure.summary import load_summary, parse_slo

COUNTS = ("sent", "acked", "ack_timeouts", "live_missed", "recovered", "lost", "duplicates", "out_of_order")


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
    boot = IntervalBootstrap(metric, b_runs, n_runs, alpha)
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
