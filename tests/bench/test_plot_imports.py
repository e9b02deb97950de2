"""Reading results must not import Locust: it monkey-patches the whole process (gevent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plot_and_report_import_neither_locust_nor_gevent() -> None:
    code = ("import sys, roombench.bench.plot, roombench.bench.report, roombench.bench.sweep, roombench.cli; "
            "print(sorted(m for m in ('locust', 'gevent') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
