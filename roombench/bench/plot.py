"""`roombench plot results/<run-id>`: PNG figures and report.md from a result folder."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roombench.bench.report import SPECTRUM, StepResult, Sweep, load, spectrum, write_report  # noqa: E402

SPECTRUM_METRICS = ("ack", "fanout", "backfill")
PHASES = ("reconnect", "rejoin", "fetch", "merge")


def _nines(p: float) -> float:
    """x position of a percentile on the 'nines' axis: 1 / (1 - p)."""
    return 1.0 / (1.0 - p / 100.0)


def _log_if_wide(ax: plt.Axes, values: list[float]) -> None:
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > 20:
        ax.set_yscale("log")


def plot_spectrum(sw: Sweep, step: int, metric: str, out: Path) -> Path | None:
    """Percentile spectrum (HDR style), one line per variant."""
    fig, ax = plt.subplots(figsize=(8, 5))
    ys: list[float] = []
    for v in sw.variants:
        spec = spectrum(sw.merged(v, step), metric)
        if spec:
            ax.plot([_nines(p) for p in spec], list(spec.values()), marker="o", label=v)
            ys += list(spec.values())
    if not ys:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xticks([_nines(p) for p in SPECTRUM], [f"{p:g}%" for p in SPECTRUM])
    ax.minorticks_off()
    _log_if_wide(ax, ys)
    ax.set(title=f"{metric} latency percentile spectrum (step {step})", xlabel="percentile", ylabel="latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out / f"spectrum_{metric}.png")


def plot_latency_vs_load(sw: Sweep, out: Path) -> Path:
    """p50 (dashed) and p99 (solid) of ack and fan-out vs offered load, per variant (repeats averaged)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, metric in zip(axes, ("ack", "fanout")):
        ys: list[float] = []
        for i, v in enumerate(sw.variants):
            for stat, style in (("p99", "-o"), ("p50", "--")):
                pts = sw.by_step(v, partial(StepResult.p, metric=metric, stat=stat))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}", label=f"{v} {stat}",
                            alpha=1.0 if stat == "p99" else 0.7)
                    ys += [p[1] for p in pts]
        _log_if_wide(ax, ys)
        ax.set(title=f"{metric} latency vs offered load", xlabel="offered load (messages/s)", ylabel="latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out / "latency_vs_load.png")


def plot_throughput(sw: Sweep, out: Path) -> Path:
    """Achieved confirmed messages/s vs offered (repeats averaged), with the ideal diagonal."""
    fig, ax = plt.subplots(figsize=(8, 5))
    top = 0.0
    for v in sw.variants:
        pts = sw.by_step(v, lambda r: r.achieved)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=v)
            top = max(top, *(max(p) for p in pts))
    ax.plot([0, top], [0, top], ":", color="grey", label="offered = achieved")
    ax.set(title="achieved throughput vs offered load", xlabel="offered load (messages/s)",
           ylabel="confirmed messages/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out / "throughput.png")


def plot_backfill_phases(sw: Sweep, step: int, out: Path) -> Path:
    """Reconnect -> rejoin -> fetch -> merge, median of each phase, stacked per variant."""
    fig, ax = plt.subplots(figsize=(8, 5))
    bottoms = np.zeros(len(sw.variants))
    any_data = False
    for phase in PHASES:
        vals = []
        for v in sw.variants:
            h = sw.merged(v, step).histogram(phase)
            vals.append(h.get_value_at_percentile(50.0) / 1000.0 if h.total_count else 0.0)
        any_data = any_data or any(vals)
        ax.bar(sw.variants, vals, bottom=bottoms, label=phase)
        bottoms += np.array(vals)
    if not any_data:
        ax.text(0.5, 0.5, "no forced drops at this step (set drop_every)", ha="center", transform=ax.transAxes)
    ax.set(title=f"reconnect -> backfill phases, medians (step {step})", ylabel="time (ms)")
    ax.legend()
    return _save(fig, out / "backfill_phases.png")


def plot_recovery_paths(sw: Sweep, out: Path) -> Path | None:
    """Both ways back after a drop, per variant and step (labelled by --recovery): the median
    drop -> recovered (Socket.IO recovery) beside drop -> backfilled (rejoin + REST).
    None when no step dropped connections."""
    labels, recover, backfill = [], [], []
    for v in sw.variants:
        for s in sw.steps:
            runs = sw.at(v, s)
            sc = runs[0].summary["metadata"]["scenario"] if runs else {}
            if not sc.get("drop_every") or "recovery" not in sc:  # no drops, or a summary from before
                continue
            labels.append(f"{v}\ns{s} {sc.get('recovery')}" + (f" +{sc['drop_for']:g}s" if sc.get("drop_for") else ""))
            for name, vals in (("recover", recover), ("backfill", backfill)):
                h = sw.merged(v, s).histogram(name)
                vals.append(h.get_value_at_percentile(50.0) / 1000.0 if h.total_count else 0.0)
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 5))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, recover, 0.4, label="recovered (drop -> CONNECT reply)")
    ax.bar(x + 0.2, backfill, 0.4, label="backfilled (drop -> rejoined, fetched, merged)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(title="after a drop: Socket.IO recovery vs REST backfill, medians", ylabel="time (ms)",
           ylim=(0, 1.3 * max(recover + backfill + [1.0])))  # headroom for the legend
    ax.legend(loc="upper left")
    return _save(fig, out / "recovery_paths.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(folder: str | Path, step: int | None = None) -> list[Path]:
    """Every figure plus report.md; returns the files written."""
    sw = load(folder)
    step = sw.default_step() if step is None else step
    files = [p for p in (plot_spectrum(sw, step, m, sw.folder) for m in SPECTRUM_METRICS) if p]
    files += [plot_latency_vs_load(sw, sw.folder), plot_throughput(sw, sw.folder),
              plot_backfill_phases(sw, step, sw.folder)]
    files += [p for p in (plot_recovery_paths(sw, sw.folder),) if p]
    files.append(write_report(sw, [f.name for f in files], step))
    return files
