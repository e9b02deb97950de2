"""Sweep files: every key's type and range is checked before anything starts; a bad one is
one line naming the file and the key, exit 2 (never a traceback, never "nothing measured")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roombench.bench.sweep import load_sweep
from roombench.exceptions import UsageError

VARIANT = "[[variants]]\nname = 'py'\n"
STEP = "[[steps]]\nusers = 2\n"


def _file(tmp_path: Path, top: str = "", variant: str = VARIANT, step: str = STEP) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(top + "\n" + variant + "\n" + step)
    return path


@pytest.mark.parametrize("top, variant, step, key", [
    ("duration = 'x'", VARIANT, STEP, "duration"),
    ("repeats = 'x'", VARIANT, STEP, "repeats"),
    ("warmup = 'x'", VARIANT, STEP, "warmup"),
    ("", VARIANT, "[[steps]]\nusers = 'x'\n", "steps[0].users"),
    ("", VARIANT, "[[steps]]\nrate = 'x'\n", "steps[0].rate"),
    ("", VARIANT, "[[steps]]\nspawn_rate = 'x'\n", "steps[0].spawn_rate"),
    ("", VARIANT, "[[steps]]\nroom_size = true\n", "steps[0].room_size"),
    ("variants = 'py'", "", STEP, "variants"),
    ("", VARIANT + "stop_p99_ms = 'x'\n", STEP, "variants[0].stop_p99_ms"),
    ("repeats = -1", VARIANT, STEP, "repeats"),
    ("repeats = 0", VARIANT, STEP, "repeats"),
    ("", VARIANT, "[[steps]]\nusers = 0\n", "steps[0].users"),
    ("duration = -5", VARIANT, STEP, "duration"),
    ("duration = inf", VARIANT, STEP, "duration"),
    ("duration = nan", VARIANT, STEP, "duration"),
    ("duration = 1e12", VARIANT, STEP, "duration"),
    ("", VARIANT + "stop_p99_ms = -1\n", STEP, "variants[0].stop_p99_ms"),
    ("", "[[variants]]\nname = 'x'\nurl = '127.0.0.1:1'\n", STEP, "variants[0].url"),
    ("", VARIANT + "ready_path = '/up'\n", STEP, "variants[0].ready_path"),
    ("", VARIANT + "colour = 'red'\n", STEP, "variants[0].colour"),
    ("speed = 3", VARIANT, STEP, "speed"),
    ("[defaults]\nwarmup = inf", VARIANT, STEP, "warmup"),
    ("", VARIANT + "impair = 'latency=fast'\n", STEP, "variants[0].impair"),
    ("", VARIANT, "[[steps]]\nimpair = 'explode@3s'\n", "steps[0].impair"),
    ("[defaults]\nimpair = 3", VARIANT, STEP, "defaults.impair"),
])
def test_bad_value_names_file_and_key(tmp_path: Path, top: str, variant: str, step: str, key: str) -> None:
    path = _file(tmp_path, top, variant, step)
    with pytest.raises(UsageError) as exc:
        load_sweep(path)
    assert str(path) in str(exc.value) and key in str(exc.value), exc.value


def test_non_utf8_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n".encode("latin-1") + (VARIANT + STEP).encode())
    with pytest.raises(UsageError, match="cannot read sweep file"):
        load_sweep(path)


@pytest.mark.parametrize("top, step", [("repeats = -1", STEP), ("duration = 'x'", STEP), ("", "[[steps]]\nusers = 0\n")])
def test_cli_exit_2_one_line_nothing_started(tmp_path: Path, top: str, step: str) -> None:
    path = _file(tmp_path, top, VARIANT, step)
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "sweep", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and str(path) in res.stderr, res.stderr
    assert not (tmp_path / "results").exists()  # refused before a result folder was made


def test_shipped_sweep_files_still_load() -> None:
    for path in Path(__file__).parent.parent.parent.joinpath("bench").glob("*.toml"):
        assert load_sweep(path)["steps"]
