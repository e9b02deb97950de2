"""bench/ is an importable package whose module names cannot shadow roombench's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generators_import_from_the_repo_root_without_shadowing_roombench() -> None:
    code = (
        "import bench.generators.run, bench.generators.genreport as g, roombench.bench.report as r; "
        "assert g is not r and g.__file__ != r.__file__, (g.__file__, r.__file__); "
        "assert 'genreport' in g.__file__ and 'roombench' in r.__file__; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
