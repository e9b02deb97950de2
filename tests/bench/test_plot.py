"""`roombench plot`: a run folder's over-time figures, true spectra, plain log tick labels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import orjson
import pytest

from roombench.bench.plot import _events, _log_if_wide, load_run_data, plot_all, spectrum_curve
from roombench.measure.metrics import add_values, new_histogram, percentiles


def test_log_axes_have_plain_tick_labels() -> None:
    fig, ax = plt.subplots()
    values = [0.3, 4.0, 40.0, 40_000.0]
    ax.plot(range(len(values)), values)
    _log_if_wide(ax, values)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert labels and not [t for t in labels if "10^" in t or "$" in t or "×" in t], labels
    assert {"1", "10", "100", "1000"} <= set(labels)


def test_the_spectrum_is_every_bucket_on_the_nines_axis() -> None:
    h = new_histogram()
    add_values(h, np.arange(1, 20_001, dtype=np.int64))  # 1 µs .. 20 ms, once each
    x, y = spectrum_curve(h)
    buckets = int(np.count_nonzero(np.ctypeslib.as_array(h.counts)))
    assert len(x) == buckets + 1 > 1000  # continuous, not five percentiles joined by lines
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    assert x[-1] >= h.total_count  # as far as the 1-in-N sample
    for p in (50.0, 90.0, 99.0, 99.9):
        at = y[int(np.searchsorted(x, 1 / (1 - p / 100) * 1.000001, side="right")) - 1]
        assert at == pytest.approx(percentiles(h, [p])[p] / 1000, rel=1e-3), p


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plot") / "run"
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--users", "8", "--spawn-rate", "50",
                          "--duration", "4", "--room-size", "4", "--rate", "4", "--drain", "3", "--drop-every", "2",
                          "--reconnect-delay", "0.1", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.mark.timeout(120)
def test_plot_of_one_run_shows_its_drops_over_time(run_folder: Path) -> None:
    files = {p.name for p in plot_all(run_folder)}
    assert files == {"latency_over_time.png", "throughput_over_time.png", "spectrum.png"}
    for name in files:
        assert (run_folder / name).stat().st_size > 10_000
    run = load_run_data(run_folder)
    s = orjson.loads((run_folder / "summary.json").read_bytes())
    drops = _events(run)["forced_drops"]
    assert drops.sum() == s["delivery"]["forced_drops"] > 0  # every drop on the time axis
    assert run.x()[0] == pytest.approx(0.5) and len(run.x()) >= 3, run.x()


@pytest.mark.timeout(60)
def test_chaos_actions_and_server_resets_are_placed_on_the_time_axis(run_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "chaos"
    shutil.copytree(run_folder, folder)
    s = orjson.loads((folder / "summary.json").read_bytes())
    s["metadata"]["chaos"] = [{"t": 1.5, "action": "restart server"}, {"t": s["metadata"]["started"] + 3,
                                                                    "action": "pause"}, {"bad": 1}]
    (folder / "summary.json").write_bytes(orjson.dumps(s))
    ivs = orjson.loads((folder / "intervals.json").read_bytes())
    ivs["intervals"][2]["counts"]["server_resets"] = 1
    (folder / "intervals.json").write_bytes(orjson.dumps(ivs))
    run = load_run_data(folder)
    offset = s["metadata"]["started"] - run.t0
    assert [(round(x - offset, 6), a) for x, a in run.chaos()] == [(1.5, "restart server"), (3.0, "pause")]
    assert _events(run)["server_resets"].tolist()[2] == 1
    assert {p.name for p in plot_all(folder)} >= {"latency_over_time.png", "throughput_over_time.png"}


def test_a_run_without_intervals_still_plots_its_spectrum(run_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(run_folder / "summary.json", folder / "summary.json")  # an older run: no interval files
    assert [p.name for p in plot_all(folder)] == ["spectrum.png"]


def test_a_folder_that_is_neither_run_nor_sweep_is_one_clear_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "plot", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "neither a run's result folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
