"""`roombench` CLI: bad options are one line and exit 2, checked before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roombench.cli import main


@pytest.mark.parametrize("argv, names", [
    (["--duration", "nan"], "--duration"),
    (["--duration", "inf"], "--duration"),
    (["--duration", "1e12"], "--duration"),
    (["--duration", "0"], "--duration"),
    (["--warmup", "inf"], "--warmup"),
    (["--drain", "nan"], "--drain"),
    (["--rate", "inf"], "--rate"),
    (["--spawn-rate", "nan"], "--spawn-rate"),
    (["--users", "0"], "--users"),
    (["--processes", "0"], "--processes"),
    (["--out", "/etc/passwd"], "--out"),
    (["--out", "/proc/nope"], "--out"),
    (["--out", "/etc/passwd/sub"], "--out"),
])
def test_bad_run_option_is_one_line_naming_it(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--host", "http://127.0.0.1:1", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roombench: error: ") and names in err[0], err


def test_out_dir_is_created_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a creatable --out passes the check (the run then fails on the closed port, not on --out)
    out = tmp_path / "a" / "b"
    main(["run", "--host", "http://127.0.0.1:1", "--duration", "nan", "--out", str(out)])
    assert "--out" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["run", "--users", "x"], ["run", "--ack", "maybe"], ["run", "--rate"]])
def test_argparse_error_is_one_line_and_a_hint(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("roombench run: error: ") and err[1] == "(see roombench run --help)"


def test_unknown_option_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 2 and "--bogus" in err[0] and err[1].startswith("(see roombench")


def test_help_states_the_duration_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "7 days" in out and "604800" in out


@pytest.mark.parametrize("argv", [["check", "http://127.0.0.1:1", "--timeout", "inf"],
                                  ["check", "http://127.0.0.1:1", "--timeout", "nan"],
                                  ["serve", "py", "--port", "70000"]])
def test_check_and_serve_bounds(argv: list[str]) -> None:
    # a child process: `check` monkey-patches with gevent, which must not happen in pytest's
    res = subprocess.run([sys.executable, "-m", "roombench.cli", *argv], capture_output=True, text=True, timeout=60)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and ("--timeout" in err[0] or "--port" in err[0]), err
