"""Read a sweep's result folder back: per-step results, tables, verdicts, report.md.

Everything here works from the folder alone (run.json, each step's summary.json with
its encoded histograms and its ``<metric>.hlog`` interval logs), so a report can be rebuilt
anywhere, long after the run. Verdicts are bench.compare's: one rule for `compare`, the
gates and report.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roombench.bench.compare import Comparison, Side, compare_sides
from roombench.bench.verdict import ALPHA, MIN_EFFECT, Run
from roombench.measure.metrics import Metrics, percentiles
from roombench.measure.summary import load_summary
from roombench.bench.sweep import load_run

TABLE_METRICS = ("ack", "fanout", "backfill")
SPECTRUM = (50.0, 90.0, 99.0, 99.9, 99.99)


@dataclass
class StepResult:
    """One finished (variant, step, repeat) of a sweep."""

    variant: str
    step: int
    repeat: int
    summary: dict[str, Any]

    @property
    def offered(self) -> float:
        """Offered load in messages/s (users x rate)."""
        meta = self.summary["metadata"]
        return meta["load"]["users"] * meta["scenario"]["rate"]

    @property
    def achieved(self) -> float:
        """Confirmed messages per second over the measured time."""
        # ack samples, not the ledger's count: the ledger also counts the warm-up
        return self.summary["latency_ms"]["ack"]["count"] / max(self.summary["metadata"]["duration_s"], 1e-9)

    def p(self, metric: str, stat: str) -> float | None:
        """A latency statistic in ms (None without samples)."""
        return self.summary["latency_ms"][metric][stat]


@dataclass
class Sweep:
    """A result folder: its run.json and every finished step."""

    folder: Path
    meta: dict[str, Any]
    results: list[StepResult]

    @property
    def variants(self) -> list[str]:
        return [v["name"] for v in self.meta["sweep"]["variants"]]

    @property
    def steps(self) -> list[int]:
        return list(range(len(self.meta["sweep"]["steps"])))

    def at(self, variant: str, step: int) -> list[StepResult]:
        """All repeats of one variant at one step."""
        return [r for r in self.results if r.variant == variant and r.step == step]

    def folder_of(self, r: StepResult) -> Path:
        """The folder of one finished step (its summary.json and interval logs)."""
        return self.folder / r.variant / f"s{r.step}-r{r.repeat}"

    def merged(self, variant: str, step: int) -> Metrics:
        """The repeats' histograms merged (percentiles over all samples)."""
        m = Metrics()
        for r in self.at(variant, step):
            m.merge(Metrics.decode(r.summary["histograms"]))
        return m

    def by_step(self, variant: str, value: Callable[[StepResult], float | None]) -> list[tuple[float, float]]:
        """(offered load, mean over repeats of ``value``) per step the variant ran."""
        out = []
        for step in self.steps:
            runs = self.at(variant, step)
            vals = [v for v in (value(r) for r in runs) if v is not None]
            if vals:
                out.append((runs[0].offered, sum(vals) / len(vals)))
        return sorted(out)

    def default_step(self) -> int:
        """The highest step every variant finished (else the highest any finished)."""
        common = [s for s in self.steps if all(self.at(v, s) for v in self.variants)]
        done = common or [r.step for r in self.results] or [0]
        return max(done)


def load(folder: str | Path) -> Sweep:
    """Load a sweep result folder (UsageError if it is not one)."""
    folder = Path(folder)
    meta = load_run(folder)
    results = []
    for item in meta["plan"]:
        if item["dir"] in meta["done"]:
            results.append(StepResult(item["variant"], item["step"], item["repeat"],
                                      load_summary(folder / item["dir"] / "summary.json")))
    return Sweep(folder, meta, results)


def spectrum(m: Metrics, metric: str) -> dict[float, float]:
    """Percentile -> ms for the HDR spectrum plot."""
    h = m.histogram(metric)
    if not h.total_count:
        return {}
    return {p: v / 1000.0 for p, v in percentiles(h, SPECTRUM).items()}


def _spread(values: list[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    return (min(vals), max(vals)) if vals else None


#: report.md's verdict lines: these metrics' p99, each variant against the first listed
VERDICT_METRICS = ("ack", "fanout")


def comparisons(sw: Sweep, step: int, metrics: tuple[str, ...] = VERDICT_METRICS) -> list[Comparison]:
    """Every variant that ran ``step`` against the first one listed that did, decided by
    bench.compare.compare_sides (bench.verdict's rule: U test over repeats, else the block
    bootstrap over the interval logs): the verdicts `roombench compare` gives for the same
    step folders."""
    with_data = [v for v in sw.variants if sw.at(v, step)]
    if len(with_data) < 2:
        return []
    base = _side(sw, with_data[0], step)
    return [compare_sides(base, _side(sw, v, step), metrics=metrics) for v in with_data[1:]]


def _side(sw: Sweep, variant: str, step: int) -> Side:
    runs = [Run(r.summary, sw.folder_of(r)) for r in sw.at(variant, step)]
    return Side(sw.folder / variant, {f"step {step}": runs}, name=variant)


def verdict_line(c: Comparison, metric: str, stat: str = "p99") -> str:
    """One report.md line: ``new vs base: metric stat``, the verdict, the numbers and why."""
    head = f"{c.new.label} vs {c.base.label}: {metric} {stat}"
    row = next((r for r in c.rows if r.metric == metric and r.stat == stat), None)
    if row is None or row.verdict == "no data" or row.ratio is None:
        return f"{head}: no data ({row.why if row is not None else 'no samples on either side'})"
    numbers = f"{_ms(row.base)} -> {_ms(row.new)} ms"
    if row.verdict in ("faster", "slower") and 0 < row.ratio < math.inf:
        times = row.ratio if row.ratio >= 1 else 1 / row.ratio  # "2.00x faster", not "0.50x faster"
        return f"{head} {times:.2f}x {row.verdict} ({numbers}; {row.why})"
    return f"{head} {row.verdict} ({numbers}; {row.why})"


def verdict_lines(sw: Sweep, step: int, metrics: tuple[str, ...] = VERDICT_METRICS, stat: str = "p99") -> list[str]:
    """report.md's verdicts at ``step``: per variant against the first, one line per metric."""
    return [verdict_line(c, m, stat) for c in comparisons(sw, step, metrics) for m in metrics]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _cell(values: list[float | None]) -> str:
    s = _spread(values)
    if s is None:
        return "-"
    lo, hi = s
    mid = (lo + hi) / 2
    return f"{mid:.3g}" if hi - lo < 1e-9 else f"{mid:.3g} ±{(hi - lo) / 2:.2g}"


def step_table(sw: Sweep, step: int) -> list[str]:
    """Markdown rows: one variant per row at ``step``, repeats' spread as ±."""
    head = ["variant"] + [f"{m} {s}" for m in TABLE_METRICS for s in ("p50", "p99", "p999")]
    head += ["acks/s", "live_missed", "lost", "duplicates", "capacity"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in sw.variants:
        runs = sw.at(v, step)
        if not runs:
            broke = sw.meta.get("capacity", {}).get(v, {}).get("broke_at", 1 << 30)
            why = f"skipped: p99 over the limit at step {broke}" if broke < step else "not run"
            rows.append(f"| {v} | " + " | ".join([why] + [""] * (len(head) - 2)) + " |")
            continue
        cells = [_cell([r.p(m, s) for r in runs]) for m in TABLE_METRICS for s in ("p50", "p99", "p999")]
        cells.append(_cell([r.achieved for r in runs]))
        for key in ("live_missed", "lost", "duplicates"):
            cells.append(str(sum(r.summary["delivery"][key] for r in runs)))
        cells.append(_capacity(sw, v))
        rows.append(f"| {v} | " + " | ".join(cells) + " |")
    return rows


def recovery_table(sw: Sweep) -> list[str]:
    """Markdown rows, rest vs csr vs auto side by side: one (variant, step) per row with its
    --recovery mode, reconnects recovered, why not, and what replay and backfill each found.
    Empty when no step measured recovery (summaries without a ``recovery`` section included)."""
    head = ["variant", "step", "recovery", "drop_for", "reconnects", "recovered", "not recovered", "replayed",
            "by replay", "by backfill", "after recovery", "lost", "duplicates", "recover p50/p99", "backfill p50/p99"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in sw.variants:
        for s in sw.steps:
            for r in sw.at(v, s):
                sc, d, rec = r.summary["metadata"]["scenario"], r.summary["delivery"], r.summary.get("recovery")
                if rec is None or sc.get("drop_every", 0) == 0:
                    continue
                pct = "-" if rec["recovered_pct"] is None else f"{rec['recovered_pct']:.1f} %"
                why = ", ".join(f"{k} {n}" for k, n in rec["not_recovered"].items()) or "-"
                mode = sc.get("recovery", "rest")
                tried = str(rec["reconnects"]) if mode != "rest" else "not tried"  # rest sends no pid
                cells = [v, str(s), mode, str(sc.get("drop_for", 0)), tried,
                         pct, why, str(rec["replayed"]), str(d.get("recovered_replay", 0)),
                         str(d.get("recovered_backfill", 0)), str(rec["backfilled_after_recovery"]), str(d["lost"]),
                         str(d["duplicates"]), _p50_p99(r, "recover"), _p50_p99(r, "backfill")]
                rows.append("| " + " | ".join(cells) + " |")
    return rows if len(rows) > 2 else []


def _p50_p99(r: StepResult, metric: str) -> str:
    lat = r.summary["latency_ms"].get(metric) or {}  # older summaries have no "recover"
    return f"{_cell([lat.get('p50')])} / {_cell([lat.get('p99')])}"


def _capacity(sw: Sweep, variant: str) -> str:
    cap = sw.meta.get("capacity", {}).get(variant)
    if not cap:
        return "-"
    held = cap.get("held")
    return f"step {held} (p99 < {cap['limit_ms']} ms)" if held is not None else f"none (p99 > {cap['limit_ms']} ms)"


def write_report(sw: Sweep, figures: list[str], at_step: int) -> Path:
    """report.md in the result folder: machine, tables per step, comparisons, figures."""
    m = sw.meta["machine"]
    lines = [f"# roombench sweep {sw.folder.name}", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, {(m['memory_bytes'] or 0) / 2**30:.0f} GiB; "
             f"Python {m['versions']['python']}, node {m['node']}; git {str(m['git_revision'])[:10]}.",
             f"Sweep file: `{sw.meta['sweep_file']}`; latencies in ms; ± is half the repeats' range.",
             "Verdicts: each variant against the first at the same step, decided as `roombench compare` "
             "decides (a Mann-Whitney U test over repeats when there are enough, else a block bootstrap over "
             f"the 1 s interval logs; alpha {ALPHA:g} for the table, changes under {100 * MIN_EFFECT:g}% are "
             "not significant).", ""]
    for s in sw.steps:
        step = sw.meta["sweep"]["steps"][s]
        lines += [f"## Step {s}: " + ", ".join(f"{k}={v}" for k, v in step.items()), ""]
        lines += step_table(sw, s)
        lines += [""] + [f"- {line}" for line in verdict_lines(sw, s)] + [""]
    recovery = recovery_table(sw)
    if recovery:
        lines += ["## Connection state recovery (rest vs csr vs auto)", ""] + recovery + [""]
    failed = sw.meta.get("failed", {})
    if failed:
        lines += ["## Failed steps", ""] + [f"- {k}: {v}" for k, v in failed.items()] + [""]
    lines += [f"## Figures (spectra and phases at step {at_step})", ""] + [f"![{f}]({f})" for f in figures]
    path = sw.folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
