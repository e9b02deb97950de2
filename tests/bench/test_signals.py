"""Real signals to a real `roombench run` / `roombench sweep`: exit codes, what is kept, no orphans."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from roombench.bench.sweep import sweep

from tests.pids import alive, descendants, wait_gone

SMALL = ["--users", "4", "--spawn-rate", "50", "--room-size", "2", "--rate", "3", "--drain", "1"]

SWEEP = """
duration = 4
warmup = 0.5
[defaults]
room_size = 2
rate = 3
drain = 1
[[variants]]
name = "py"
[[steps]]
users = 3
[[steps]]
users = 4
"""


def _start(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "roombench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd)


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    """stdout lines up to the first holding ``needle`` (Locust is starting once it is printed)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in {lines}")


def _tree(proc: subprocess.Popen[str], at_least: int) -> set[int]:
    deadline = time.monotonic() + 10
    while len(pids := alive(descendants(proc.pid))) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_run_keeps_what_was_measured_and_wins_over_the_slo_gate(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    proc = _start("run", *SMALL, "--duration", "30", "--out", str(out), "--slo", "lost==0")
    _wait_line(proc, "users x")
    pids = _tree(proc, 3)  # the embedded server, the watchdog, the Locust child
    deadline = time.monotonic() + 30  # measuring: its first interval closed (not a fixed sleep: a loaded
    while not (out / "live.json").exists() and time.monotonic() < deadline:  # machine's Locust starts late)
        time.sleep(0.1)
    time.sleep(1)
    sent = time.monotonic()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + sig, rest
    assert took < 10, took  # stop, drain (1 s), write: not the 30 s asked for
    s = orjson.loads((out / "summary.json").read_bytes())
    assert s["metadata"]["interrupted"] is True
    assert 0 < s["metadata"]["duration_s"] < 10 and s["delivery"]["sent"] > 0
    assert "SLO lost==0: PASS" in rest  # the gate held, the signal's exit code wins anyway
    assert f"interrupted by {signal.Signals(sig).name}" in rest
    assert wait_gone(pids, 3.0) == set()


@pytest.mark.timeout(60)
def test_sigkill_of_run_leaves_no_process(tmp_path: Path) -> None:
    proc = _start("run", *SMALL, "--duration", "30", "--processes", "2", "--out", str(tmp_path))
    _wait_line(proc, "users x")
    # server, watchdog, Locust master and its two forked workers
    pids = _tree(proc, 5)
    assert len(pids) >= 5, pids
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_gone(pids, 5.0) == set()


@pytest.mark.timeout(120)
def test_sigterm_to_sweep_marks_the_step_starts_nothing_more_and_resume_redoes_it(tmp_path: Path) -> None:
    spec = tmp_path / "two.toml"
    spec.write_text(SWEEP)
    proc = _start("sweep", str(spec), cwd=tmp_path)
    _wait_line(proc, "[1/2]")
    pids = _tree(proc, 3)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, rest
    assert "[2/2]" not in rest  # the next step never started
    (out,) = (tmp_path / "results").iterdir()
    meta = orjson.loads((out / "run.json").read_bytes())
    assert meta["done"] == [] and meta["interrupted"] == {"py/s0-r0": "SIGTERM"}
    assert meta["interrupted_by"] == "SIGTERM"
    assert orjson.loads((out / "py/s0-r0/summary.json").read_bytes())["metadata"]["interrupted"] is True
    assert not (out / "py/s1-r0").exists()
    assert wait_gone(pids, 3.0) == set()

    meta["failed"] = {"py/s1-r0": "a stale failure of an earlier attempt"}
    (out / "run.json").write_bytes(orjson.dumps(meta))
    sweep(spec, resume=out)
    after = orjson.loads((out / "run.json").read_bytes())
    assert sorted(after["done"]) == ["py/s0-r0", "py/s1-r0"]
    assert "failed" not in after and "interrupted" not in after and "interrupted_by" not in after
    assert orjson.loads((out / "py/s0-r0/summary.json").read_bytes())["metadata"]["interrupted"] is False
