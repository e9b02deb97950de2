"""Sweeps, result folders, plots and reports (real servers, real Locust children)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from roombench.exceptions import UsageError
from roombench.bench.plot import plot_all
from roombench.bench.report import load, verdict_lines
from roombench.bench.sweep import load_sweep, plan, sweep

DATA = Path(__file__).parent.parent / "data"
FIGURES = {"spectrum_ack.png", "spectrum_fanout.png", "spectrum_backfill.png", "latency_vs_load.png",
           "throughput.png", "backfill_phases.png", "report.md"}

TINY = """
duration = 2
warmup = 0.5
repeats = {repeats}
[defaults]
room_size = 3
drop_every = 1
reconnect_delay = 0.1
drain = 2
[[variants]]
name = "py"
token = "tiny-s3cret-t0ken"
stop_p99_ms = {limit}
[[variants]]
name = "node"
[[steps]]
users = 3
rate = 2
[[steps]]
users = 6
rate = 3
"""


def _write(tmp_path: Path, repeats: int = 1, limit: float = 10_000) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(repeats=repeats, limit=limit))
    return path


@pytest.mark.timeout(180)
def test_tiny_sweep_writes_results_and_every_plot(tmp_path: Path) -> None:
    out = sweep(_write(tmp_path), out_root=tmp_path / "results")
    meta = orjson.loads((out / "run.json").read_bytes())
    assert meta["schema"] == "roombench.run/1"
    assert meta["machine"]["cores"] and meta["machine"]["versions"]["locust"]
    assert sorted(meta["done"]) == sorted(p["dir"] for p in meta["plan"]) and len(meta["done"]) == 4
    for item in meta["plan"]:
        s = orjson.loads((out / item["dir"] / "summary.json").read_bytes())
        assert s["delivery"]["lost"] == 0 and s["histograms"]["ack"]
    assert meta["capacity"]["py"]["held"] == 1  # the generous limit held at every step
    files = {p.name for p in plot_all(out)}
    assert FIGURES <= files
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| py |" in report and "| node |" in report and " cores" in report
    leaked = [p for p in out.rglob("*") if p.is_file() and b"tiny-s3cret-t0ken" in p.read_bytes()]
    assert not leaked, leaked  # run.json records the sweep with its tokens redacted


@pytest.mark.timeout(120)
def test_interrupted_sweep_resumes_only_what_is_missing(tmp_path: Path) -> None:
    spec = _write(tmp_path)
    out = sweep(spec, out_root=tmp_path / "results")
    meta = orjson.loads((out / "run.json").read_bytes())
    redo = meta["done"].pop()  # as if Ctrl-C hit before the last step finished
    kept = {d: (out / d / "summary.json").stat().st_mtime_ns for d in meta["done"]}
    (out / "run.json").write_bytes(orjson.dumps(meta))
    sweep(spec, resume=out)
    after = orjson.loads((out / "run.json").read_bytes())
    assert redo in after["done"] and len(after["done"]) == 4
    assert all((out / d / "summary.json").stat().st_mtime_ns == t for d, t in kept.items())


def test_stop_rule_records_capacity(tmp_path: Path) -> None:
    meta = {"capacity": {}}
    from roombench.bench import sweep as sweep_mod

    step_dir = tmp_path / "py" / "s0-r0"
    step_dir.mkdir(parents=True)
    shutil.copy(DATA / "sweep-v1" / "py" / "s1-r0" / "summary.json", step_dir / "summary.json")
    sweep_mod._stop_rule({"name": "py", "stop_p99_ms": 1.0}, {"step": 0, "dir": "py/s0-r0"}, tmp_path, meta)
    assert meta["capacity"]["py"]["broke_at"] == 0 and meta["capacity"]["py"]["held"] is None


def test_results_of_schema_v1_still_load_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(DATA / "sweep-v1", folder)
    sw = load(folder)
    assert sw.variants == ["py", "node"] and len(sw.results) == 4
    assert {p.name for p in plot_all(folder)} >= FIGURES
    lines = verdict_lines(sw, 1)  # one run each, from before interval logs: compare's rule says so
    assert lines[0] == ("node vs py: ack p99 not significant (14 -> 14.4 ms; too few runs: 1+1 (a U test needs 7+7 "
                        "at this table's alpha) and no interval logs)")
    assert len(lines) == 2 and lines[1].startswith("node vs py: fanout p99 not significant (")


def test_plan_orders_variant_by_variant_with_repeats() -> None:
    spec = {"variants": [{"name": "a"}, {"name": "b"}], "steps": [{}, {}], "repeats": 2}
    dirs = [p["dir"] for p in plan(spec)]
    assert dirs[:4] == ["a/s0-r0", "a/s0-r1", "a/s1-r0", "a/s1-r1"] and len(dirs) == 8


@pytest.mark.parametrize("text,needle", [
    ("[[steps]]\nusers = 1\n", "at least one [[variants]]"),
    ("[[variants]]\nname = 'nope'\n[[steps]]\nusers = 1\n", "not built in"),
    ("[[variants]]\nname = 'py'\n[[steps]]\nusres = 1\n", "unknown options"),
    ("[[variants]]\nname = 'py'\n[[steps]]\nrate = -1\n", "--rate must be > 0"),
    ("not toml [", "cannot read sweep file"),
    ("[[variants]]\nname = 'py'\nchaos = 'kill-every=1s,down=2s'\n[[steps]]\nusers = 1\n",
     "variants[0].chaos: bad chaos spec"),
    ("[[variants]]\nname = 'py'\n[[steps]]\nusers = 1\nchaos = 'explode@1s'\n", "steps[0].chaos: bad chaos spec"),
    ("[[variants]]\nname = 'py'\nchaos = 3\n[[steps]]\nusers = 1\n", "variants[0].chaos must be a string"),
    ("[[variants]]\nname = 'x'\nurl = 'http://127.0.0.1:1'\nchaos = 'kill@1s'\n[[steps]]\nusers = 1\n",
     "not one given by url"),
    ("[[variants]]\nname = 'x'\nurl = 'http://127.0.0.1:1'\n[[steps]]\nusers = 1\nchaos = 'kill@1s'\n",
     "not one given by url"),
    ("[[variants]]\nname = 'x'\ncommand = 'srv --port {port} --token {token}'\n[[steps]]\nusers = 1\n",
     "variants[0].command: command of variant 'x' has {token}"),
])
def test_bad_sweep_files_are_usage_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(needle)):
        load_sweep(path)
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "sweep", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr and needle in res.stderr


def test_plot_of_a_folder_that_is_not_a_sweep_is_exit_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "plot", str(tmp_path)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2 and "run.json" in res.stderr and "Traceback" not in res.stderr


def test_capacity_is_the_highest_step_whose_every_repeat_held(tmp_path: Path) -> None:
    from roombench.bench import sweep as sweep_mod

    src = orjson.loads((DATA / "sweep-v1" / "py" / "s1-r0" / "summary.json").read_bytes())
    meta: dict = {"capacity": {}}
    variant = {"name": "py", "stop_p99_ms": 50.0}
    for step, repeat, p99 in [(0, 0, 10.0), (0, 1, 12.0), (1, 0, 20.0), (1, 1, 80.0)]:
        for m in ("ack", "fanout"):
            src["latency_ms"][m]["p99"] = p99
        d = tmp_path / f"s{step}-r{repeat}"
        d.mkdir()
        (d / "summary.json").write_bytes(orjson.dumps(src))
        sweep_mod._stop_rule(variant, {"step": step, "dir": d.name}, tmp_path, meta)
    assert meta["capacity"]["py"]["held"] == 0 and meta["capacity"]["py"]["broke_at"] == 1


CHAOS = """
duration = 3
[defaults]
room_size = 2
rate = 2
drain = 1
reconnect_delay = 0.1
[[variants]]
name = "py"
chaos = "kill@1s"
[[steps]]
users = 2
[[steps]]
users = 3
chaos = "pause@1s,resume@1.5s"
"""


def _two_steps(tmp_path: Path, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sweep ``text`` (variant py, two steps); both steps' summaries, once both are done."""
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    out = sweep(path, out_root=tmp_path / "results")
    meta = orjson.loads((out / "run.json").read_bytes())
    assert sorted(meta["done"]) == ["py/s0-r0", "py/s1-r0"] and "failed" not in meta
    first, second = (orjson.loads((out / d / "summary.json").read_bytes()) for d in ("py/s0-r0", "py/s1-r0"))
    return first, second


@pytest.mark.timeout(90)
def test_sweep_chaos_per_variant_and_step_and_the_server_is_back_for_the_next_step(tmp_path: Path) -> None:
    first, second = _two_steps(tmp_path, CHAOS)
    assert [a["action"] for a in first["metadata"]["chaos"]] == ["kill"]  # the variant's
    assert [a["action"] for a in second["metadata"]["chaos"]] == ["pause", "resume"]  # the step's wins
    assert second["delivery"]["acked"] > 0  # killed in step 0, restarted before step 1


IMPAIR = """
duration = 2
[defaults]
room_size = 2
rate = 5
drain = 1
[[variants]]
name = "py"
impair = "latency=40ms"
[[steps]]
users = 2
[[steps]]
users = 2
impair = "latency=5ms"
"""


@pytest.mark.timeout(90)
def test_sweep_impairs_per_variant_and_step(tmp_path: Path) -> None:
    first, second = _two_steps(tmp_path, IMPAIR)
    assert first["metadata"]["impair"]["spec"] == "latency=40ms"  # the variant's
    assert second["metadata"]["impair"]["spec"] == "latency=5ms"  # the step's wins
    # 40 ms each way: an ack's round trip takes >= 80 ms through the proxy, 5 ms each way far less
    assert first["latency_ms"]["ack"]["p50"] >= 80 > second["latency_ms"]["ack"]["p50"]
    assert first["delivery"]["lost"] == second["delivery"]["lost"] == 0 and first["delivery"]["acked"] > 0
