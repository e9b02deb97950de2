"""The sweep report's recovery table and figure: rest vs csr side by side (node-csr, real Locust)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from roombench.bench.plot import plot_all
from roombench.bench.sweep import sweep

SWEEP = """
duration = 2
warmup = 0.5
[defaults]
room_size = 3
rate = 4
drop_every = 0.7
reconnect_delay = 0.1
drain = 2
[[variants]]
name = "node-csr"
[[steps]]
users = 3
recovery = "rest"
[[steps]]
users = 3
recovery = "csr"
"""


@pytest.mark.timeout(120)
def test_report_puts_rest_and_csr_side_by_side(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (`node` is not on PATH)")
    path = tmp_path / "recovery.toml"
    path.write_text(SWEEP)
    out = sweep(path, out_root=tmp_path / "results")
    files = {p.name for p in plot_all(out)}
    assert "recovery_paths.png" in files and (out / "recovery_paths.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Connection state recovery (rest vs csr vs auto)" in report
    section = report.split("## Connection state recovery", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| node-csr | ")]
    assert [r[2] for r in rows] == ["rest", "csr"]
    rest, csr = rows
    assert rest[4] == "not tried" and int(csr[4]) > 0 and csr[5].endswith(" %")
    assert rest[11] == csr[11] == "0"  # lost
