"""`roombench plot results/<run-id>`: PNG figures from one run's folder, or figures and
report.md from a sweep's.

One run (a folder with summary.json): latency over time (p50 / p99 / max per interval and
metric, with forced drops, reconnects, server resets and chaos actions marked), throughput
and delivered / lost over time, and the percentile spectrum. A sweep: the spectra per metric
(one line per variant), latency and throughput vs load, backfill phases, and the over-time
figures of each variant's run at the chosen step.

Spectra are the histogram's own: every bucket, drawn as steps on HdrHistogram's "nines"
axis (x = 1 / (1 - p)), up to the run's 1-in-N sample. Log axes carry plain tick labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from roombench.bench.report import StepResult, Sweep, load, write_report  # noqa: E402
from roombench.exceptions import ReportError, UsageError  # noqa: E402
from roombench.measure.intervals import Interval, load_intervals  # noqa: E402
from roombench.measure.metrics import Metrics, _counts_view, percentiles  # noqa: E402
from roombench.measure.summary import load_summary  # noqa: E402

SPECTRUM_METRICS = ("ack", "fanout", "backfill")
PHASES = ("reconnect", "rejoin", "fetch", "merge")


def _plain(v: float, _pos: int | None = None) -> str:
    """A tick label without powers of ten: 0.05, 2, 40, 1000, 20000."""
    if v <= 0:
        return ""
    return f"{v:.10g}" if v >= 1 else f"{v:.3g}"


def _log_y(ax: plt.Axes) -> None:
    """Log y with 1-2-5 ticks labelled plainly (matplotlib would print 4×10^1)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _log_if_wide(ax: plt.Axes, values: list[float]) -> None:
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > 20:
        _log_y(ax)


# -- spectra ----------------------------------------------------------------------------


def spectrum_curve(h: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """The histogram's whole percentile spectrum as steps: (x on the nines axis, 1 / (1 - p),
    one more than y; latency in ms per bucket, its highest equivalent value as hdrh reports
    percentiles). The last step ends at the 1-in-N point (p = 1 - 1/N) or just after."""
    counts = _counts_view(h)
    idx = np.flatnonzero(counts)
    n = h.total_count
    cum = np.cumsum(counts[idx].astype(np.float64))
    below = np.concatenate([[0.0], cum[:-1]]) / n  # fraction of samples under each bucket
    x = 1.0 / (1.0 - below)
    end = max(float(n), x[-1] * 1.5)
    y = np.array([h.get_highest_equivalent_value(h.get_value_from_index(int(i))) for i in idx]) / 1000.0
    return np.append(x, end), np.append(y, y[-1])


def _nines_axis(ax: plt.Axes, x_max: float) -> None:
    """HdrHistogram's plotter axis: 0%, 90%, 99%, 99.9%, ... as far as the data goes."""
    ax.set_xscale("log")
    ticks, labels, k = [1.0], ["0%"], 1
    while 10.0**k <= x_max * 1.0001:
        ticks.append(10.0**k)
        labels.append(f"{100 - 100 / 10**k:.{max(k - 2, 0)}f}%")
        k += 1
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(1.0, max(x_max, 10.0))


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


#: curves often overlap (ack and fan-out, reconnect and backfill): dashes keep each visible
_STYLES = ("-", "--", "-.", ":")


def _draw_spectra(ax: plt.Axes, curves: list[tuple[str, HdrHistogram]]) -> bool:
    x_max, ys = 1.0, []
    for i, (label, h) in enumerate(curves):
        if not h.total_count:
            continue
        x, y = spectrum_curve(h)
        p99 = percentiles(h, [99.0])[99.0] / 1000.0
        ax.step(x, y, where="post", color=f"C{i}", ls=_STYLES[i % len(_STYLES)], lw=1.6,
                label=f"{label} (n={h.total_count:,}, p99 {_ms(p99)} ms, max {_ms(y[-1])} ms)")
        x_max, ys = max(x_max, float(x[-1])), ys + list(y)
    if not ys:
        return False
    _nines_axis(ax, x_max)
    _log_if_wide(ax, ys)
    ax.set(xlabel="percentile", ylabel="latency (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")  # spectra rise to the right: that corner stays empty
    return True


def plot_spectrum(sw: Sweep, step: int, metric: str, out: Path) -> Path | None:
    """Percentile spectrum (HdrHistogram style, the whole histogram), one line per variant."""
    fig, ax = plt.subplots(figsize=(9, 5))
    if not _draw_spectra(ax, [(v, sw.merged(v, step).histogram(metric)) for v in sw.variants]):
        plt.close(fig)
        return None
    ax.set_title(f"{metric} latency percentile spectrum ({_step_label(sw, step)})")
    return _save(fig, out / f"spectrum_{metric}.png")


def _step_label(sw: Sweep, step: int) -> str:
    runs = [r for v in sw.variants for r in sw.at(v, step)]
    return f"step {step}, {runs[0].offered:g} msg/s offered" if runs else f"step {step}"


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


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends outside the axes stay in
    plt.close(fig)
    return path


# -- one run over time -------------------------------------------------------------------

#: metrics of the over-time figure, in this order, when they have samples
OVER_TIME_METRICS = ("ack", "fanout", "backfill")
RUN_SPECTRUM_METRICS = ("ack", "fanout", "reconnect", "backfill")
#: an interval is shaded as a reconnect storm when at least this share of the users
#: reconnected in it, and STORM_OVER_TYPICAL times the run's typical (median) interval
STORM_SHARE = 0.5
STORM_OVER_TYPICAL = 4.0


@dataclass
class RunData:
    """One run's folder: summary.json and, when the run wrote them, its intervals."""

    folder: Path
    summary: dict[str, Any]
    interval_s: float
    intervals: list[Interval]

    @property
    def t0(self) -> float:
        return self.intervals[0].start if self.intervals else float(self.summary["metadata"].get("started", 0.0))

    def metrics(self) -> Metrics:
        return Metrics.decode(self.summary.get("histograms", {}))

    def x(self) -> np.ndarray:
        """Each interval's middle, seconds since the first interval began."""
        return np.array([iv.start - self.t0 + self.interval_s / 2 for iv in self.intervals])

    def counts(self, key: str) -> np.ndarray:
        return np.array([iv.counts.get(key, 0) for iv in self.intervals], dtype=np.float64)

    def per_s(self, key: str) -> np.ndarray:
        return self.counts(key) / np.array([max(iv.length, 1e-9) for iv in self.intervals])

    def load_end(self) -> float | None:
        """x where the load stopped (drain and reconcile follow), if the summary says."""
        meta = self.summary["metadata"]
        if "started" not in meta or "duration_s" not in meta:
            return None
        warmup = float(meta.get("scenario", {}).get("warmup") or 0.0)
        return float(meta["started"]) + warmup + float(meta["duration_s"]) - self.t0

    def chaos(self) -> list[tuple[float, str]]:
        """(x, action) of metadata.chaos: ``t`` unix seconds, or seconds since the run started."""
        meta = self.summary["metadata"]
        out = []
        for item in meta.get("chaos") or []:
            if not isinstance(item, dict) or not isinstance(item.get("t"), (int, float)):
                continue
            t = float(item["t"])
            unix = t if t > 1e9 else float(meta.get("started", self.t0)) + t
            out.append((unix - self.t0, str(item.get("action", "chaos"))))
        return out


def load_run_data(folder: str | Path) -> RunData:
    """A run folder (UsageError without a summary.json); no intervals for an older run."""
    folder = Path(folder)
    summary = load_summary(folder / "summary.json")
    try:
        interval_s, intervals = load_intervals(folder)
    except ReportError:
        interval_s, intervals = 1.0, []
    return RunData(folder, summary, interval_s, intervals)


#: event key -> (legend, colour); server resets are also red dashed lines across every panel
EVENT_STYLE = {"forced_drops": ("forced drops", "C3"), "reconnects": ("reconnects", "C1"),
               "server_resets": ("server resets (red dashed)", "black")}


def _events(run: RunData) -> dict[str, np.ndarray]:
    """Per-interval disruption counts worth marking, by label (only those that happened)."""
    events = {"forced_drops": run.counts("forced_drops"),
              "reconnects": np.array([iv.count("reconnect") for iv in run.intervals], dtype=np.float64),
              "server_resets": run.counts("server_resets")}
    return {k: v for k, v in events.items() if v.any()}


def _mark(axes: list[plt.Axes], run: RunData, events: dict[str, np.ndarray]) -> None:
    """Warm-up, reconnect storms, server resets and chaos actions on every time axis."""
    users = max(int(run.summary["metadata"].get("users") or 0), 1)
    warmup = float(run.summary["metadata"].get("scenario", {}).get("warmup") or 0.0)
    half = run.interval_s / 2
    reconnects = events.get("reconnects", np.zeros(0))
    typical = float(np.median(reconnects[reconnects > 0])) if reconnects.any() else 0.0
    storm_at = max(2.0, STORM_SHARE * users, STORM_OVER_TYPICAL * typical)
    storms = [x for x, n in zip(run.x(), reconnects) if n >= storm_at]
    end = run.load_end()
    last = run.x()[-1] + half if run.intervals else 0.0
    drain = end is not None and end < last - 0.05
    resets = [x for x, n in zip(run.x(), events.get("server_resets", [])) if n]
    chaos = run.chaos()
    for ax in axes:
        if warmup:
            ax.axvspan(0, warmup, color="grey", alpha=0.12, lw=0)
        if drain:
            ax.axvspan(end, last, color="C0", alpha=0.08, lw=0)
        for x in storms:
            ax.axvspan(x - half, x + half, color="C1", alpha=0.12, lw=0)
        for x in resets:
            ax.axvline(x, color="C3", ls="--", lw=1.2)
        for x, _action in chaos:
            ax.axvline(x, color="purple", ls=":", lw=1.4)
    top = axes[0]
    for x, action in chaos:
        top.annotate(action, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -2),
                     textcoords="offset points", va="top", fontsize="small", color="purple", rotation=90)
    # the key to the shading, in the event panel's legend
    keys: list[Any] = []
    if warmup:
        keys.append(Patch(color="grey", alpha=0.25, label="warm-up (latency not kept)"))
    if storms:
        keys.append(Patch(color="C1", alpha=0.25, label=f"reconnect storm (>= {storm_at:.0f})"))
    if chaos:
        keys.append(Line2D([], [], color="purple", ls=":", label="chaos action"))
    if drain:
        keys.append(Patch(color="C0", alpha=0.2, label="load stopped (drain)"))
    bars, labels = axes[-1].get_legend_handles_labels()
    axes[-1].legend(handles=bars + keys, **_OUTSIDE)


def _event_panel(ax: plt.Axes, run: RunData, events: dict[str, np.ndarray]) -> None:
    x = run.x()
    width = run.interval_s / (len(events) + 1)
    for i, (label, n) in enumerate(events.items()):
        text, color = EVENT_STYLE[label]
        ax.bar(x + (i - (len(events) - 1) / 2) * width, n, width=width, label=text, color=color)
    if not events:
        ax.text(0.5, 0.5, "no forced drops, reconnects or server resets", ha="center", va="center",
                transform=ax.transAxes, fontsize="small", color="grey")
    ax.set_ylabel(f"per {run.interval_s:g} s")
    ax.grid(True, axis="y", alpha=0.3)


#: legends of the over-time panels sit right of the plot, never over the data
_OUTSIDE: dict[str, Any] = {"fontsize": "small", "loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
                            "borderaxespad": 0.0}


def _title(run: RunData, what: str) -> str:
    meta = run.summary["metadata"]
    sc = meta.get("scenario", {})
    load_ = meta.get("load", {})
    users = load_.get("users", meta.get("users"))
    bits = [f"{users} users x {sc.get('rate', '?')} msg/s"]
    if sc.get("drop_every"):
        bits.append(f"drop every {sc['drop_every']:g} s/user")
    return f"{what} — {', '.join(bits)} ({run.folder.name})"


def plot_latency_over_time(run: RunData, out: Path, name: str = "latency_over_time.png") -> Path | None:
    """p50, p99 and max of each interval, one panel per metric, disruptions marked below."""
    metrics = [m for m in OVER_TIME_METRICS if any(iv.count(m) for iv in run.intervals)]
    if not metrics:
        return None
    events = _events(run)
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(11, 2.6 * len(metrics) + 2), sharex=True,
                             gridspec_kw={"height_ratios": [3] * len(metrics) + [1.4]})
    x = run.x()
    for ax, metric in zip(axes, metrics):
        stats = {k: np.full(len(x), np.nan) for k in ("p50", "p99", "max")}
        for i, iv in enumerate(run.intervals):
            h = iv.histogram(metric)
            if h is not None and h.total_count:
                p = percentiles(h, [50.0, 99.0])
                stats["p50"][i], stats["p99"][i] = p[50.0] / 1000, p[99.0] / 1000
                stats["max"][i] = h.get_highest_equivalent_value(h.get_max_value()) / 1000
        # max last, thin and dashed: with few samples it equals p99 and must not hide it
        for stat, style in (("p50", dict(color="C0", lw=1.6, marker=".")), ("p99", dict(color="C1", lw=1.6, marker=".")),
                            ("max", dict(color="C3", lw=0.9, ls="--", marker="x"))):
            ax.plot(x, stats[stat], ms=4, label=stat, **style)
        _log_if_wide(ax, [v for v in np.concatenate(list(stats.values())) if np.isfinite(v)])
        ax.set_ylabel(f"{metric} (ms)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(**_OUTSIDE)
    _event_panel(axes[-1], run, events)
    _mark(list(axes), run, events)
    axes[-1].set_xlabel("seconds since start")
    axes[0].set_title(_title(run, "latency per interval"), loc="left", fontsize="medium")
    axes[-1].set_xlim(0, max(x[-1] + run.interval_s / 2, 1.0))
    return _save(fig, out / name)


def plot_throughput_over_time(run: RunData, out: Path, name: str = "throughput_over_time.png") -> Path | None:
    """Sent / confirmed messages per second, and deliveries (live, backfilled, lost) per second."""
    if not run.intervals:
        return None
    events = _events(run)
    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(11, 8), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 3, 1.4]})
    x = run.x()
    top.plot(x, run.per_s("sent"), marker=".", label="sent")
    top.plot(x, run.per_s("acked"), marker=".", label="confirmed (acked)")
    failed = run.per_s("ack_timeouts") + run.per_s("ack_errors")
    if failed.any():
        top.plot(x, failed, marker=".", color="C3", label="ack timeouts + errors")
    top.set_ylabel("messages/s")
    top.set_ylim(bottom=0)
    top.legend(**_OUTSIDE)
    top.grid(True, alpha=0.3)
    mid.plot(x, run.per_s("delivered_live"), marker=".", color="C2", label="delivered live")
    mid.set_ylabel("deliveries/s")
    mid.set_ylim(bottom=0)
    mid.grid(True, alpha=0.3)
    right = mid.twinx()
    w = run.interval_s * 0.4
    right.bar(x - w / 2, run.counts("recovered"), width=w, color="C9", alpha=0.7, label="recovered by backfill")
    right.bar(x + w / 2, run.counts("lost"), width=w, color="C3", label="lost (by intended send time)")
    right.set_ylabel(f"pairs per {run.interval_s:g} s")
    right.set_ylim(bottom=0, top=max(1.0, run.counts("recovered").max(), run.counts("lost").max()) * 1.15)
    lines = mid.get_legend_handles_labels()
    bars = right.get_legend_handles_labels()
    d = run.summary.get("delivery", {})
    # outside, past the right-hand axis's labels
    mid.legend(lines[0] + bars[0], lines[1] + bars[1], **{**_OUTSIDE, "bbox_to_anchor": (1.08, 1.0)},
               title=f"run: lost {d.get('lost', '?')}, recovered {d.get('recovered', '?')}",
               title_fontsize="small")
    _event_panel(bottom, run, events)
    _mark([top, mid, bottom], run, events)
    bottom.set_xlabel("seconds since start")
    top.set_title(_title(run, "throughput per interval"), loc="left", fontsize="medium")
    bottom.set_xlim(0, max(x[-1] + run.interval_s / 2, 1.0))
    return _save(fig, out / name)


def plot_run_spectrum(run: RunData, out: Path, name: str = "spectrum.png") -> Path | None:
    """The whole run's percentile spectrum per metric (from summary.json's histograms)."""
    m = run.metrics()
    fig, ax = plt.subplots(figsize=(9, 5))
    if not _draw_spectra(ax, [(metric, m.histogram(metric)) for metric in RUN_SPECTRUM_METRICS]):
        plt.close(fig)
        return None
    ax.set_title(_title(run, "latency percentile spectrum"), loc="left", fontsize="medium")
    return _save(fig, out / name)


def plot_run(folder: str | Path) -> list[Path]:
    """Every figure of one run's folder; returns the files written."""
    run = load_run_data(folder)
    made = [plot_latency_over_time(run, run.folder), plot_throughput_over_time(run, run.folder),
            plot_run_spectrum(run, run.folder)]
    return [p for p in made if p]


def _sweep_over_time(sw: Sweep, step: int) -> list[Path]:
    """The over-time figures of each variant's first repeat at ``step`` (runs that have intervals)."""
    files = []
    for item in sw.meta["plan"]:
        if item["step"] != step or item["repeat"] != 0 or item["dir"] not in sw.meta["done"]:
            continue
        run = load_run_data(sw.folder / item["dir"])
        if run.intervals:
            v = item["variant"]
            made = [plot_latency_over_time(run, sw.folder, f"latency_over_time_{v}.png"),
                    plot_throughput_over_time(run, sw.folder, f"throughput_over_time_{v}.png")]
            files += [p for p in made if p]
    return files


def plot_all(folder: str | Path, step: int | None = None) -> list[Path]:
    """Every figure (plus report.md for a sweep); returns the files written. A folder with a
    summary.json and no run.json is one run."""
    folder = Path(folder)
    if (folder / "summary.json").exists() and not (folder / "run.json").exists():
        return plot_run(folder)
    if not (folder / "run.json").exists():
        raise UsageError(f"{folder} is neither a run's result folder (summary.json) nor a sweep's (run.json)")
    sw = load(folder)
    step = sw.default_step() if step is None else step
    files = [p for p in (plot_spectrum(sw, step, m, sw.folder) for m in SPECTRUM_METRICS) if p]
    files += [plot_latency_vs_load(sw, sw.folder), plot_throughput(sw, sw.folder),
              plot_backfill_phases(sw, step, sw.folder)]
    files += _sweep_over_time(sw, step)
    files.append(write_report(sw, [f.name for f in files], step))
    return files
