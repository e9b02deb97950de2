"""CI outputs: the JUnit file parses as JUnit XML (the common Jenkins/Ant element and attribute
names), one testcase per SLO / gate, failures carry the measured value; the Markdown summary."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from roombench.bench.ciout import Check, junit_xml
from tests.bench.test_compare import fake_run

BASELINE = Path(__file__).resolve().parents[2] / "bench" / "baselines" / "embedded-smoke"
SMALL = ["--users", "4", "--spawn-rate", "50", "--duration", "2", "--room-size", "2", "--rate", "5", "--drain", "2"]


def roombench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roombench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def parse_junit(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    """The one testsuite and its testcases, after checking the JUnit structure."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    for attr in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp"):
        assert attr in suite.attrib, attr
    assert int(suite.get("tests", -1)) == len(cases) == int(root.get("tests", -1))
    assert int(suite.get("failures", -1)) == sum(1 for c in cases if c.find("failure") is not None)
    float(suite.get("time", "x"))
    for case in cases:
        assert case.get("name") and case.get("classname")
        assert {child.tag for child in case} <= {"failure", "system-out"}
        fail = case.find("failure")
        if fail is not None:
            assert fail.get("message") and fail.get("type")
    return suite, cases


def test_junit_document_structure(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_bytes(junit_xml([Check("slo", "ack.p99<5", True, "measured 3.1"),
                                Check("gate", "lost>0", False, "lost = 2 <&> \"quoted\"")], time_s=3.5))
    suite, cases = parse_junit(path)
    assert suite.get("failures") == "1" and suite.get("time") == "3.500"
    fail = cases[1].find("failure")
    assert fail is not None and fail.get("message") == "lost = 2 <&> \"quoted\""


@pytest.mark.timeout(90)
def test_run_writes_junit_and_markdown_with_measured_values(tmp_path: Path) -> None:
    junit, md = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "summary.md"
    res = roombench("run", *SMALL, "--out", str(tmp_path / "run"), "--quiet", "--slo", "ack.p99<60000",
                    "--slo", "ack.p50<0.0001", "--fail-on", "lost>0", "--junit", str(junit), "--markdown", str(md))
    assert res.returncode == 1, res.stdout + res.stderr
    _suite, cases = parse_junit(junit)
    by_name = {c.get("name"): c for c in cases}
    assert set(by_name) == {"ack.p99<60000", "ack.p50<0.0001", "lost>0"}
    assert by_name["ack.p99<60000"].find("failure") is None
    fail = by_name["ack.p50<0.0001"].find("failure")
    assert fail is not None and "measured" in (fail.get("message") or "")
    assert by_name["lost>0"].get("classname") == "roombench.gate"
    text = md.read_text()
    assert "| metric | count | p50 |" in text and "| ack |" in text
    assert "❌ FAIL" in text and "✅ pass" in text and "`lost>0`" in text


def test_compare_junit_and_markdown(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 2.0, seed=1)
    slow = fake_run(tmp_path / "slow", 4.0, seed=3)
    junit, md = tmp_path / "c.xml", tmp_path / "c.md"
    res = roombench("compare", str(a), str(slow), "--fail-on", "ack.p99>+10%", "--fail-on", "lost>0",
                    "--junit", str(junit), "--markdown", str(md))
    assert res.returncode == 1, res.stdout + res.stderr
    _suite, cases = parse_junit(junit)
    assert [c.find("failure") is not None for c in cases] == [True, False]
    message = cases[0].find("failure").get("message")  # type: ignore[union-attr]
    assert "slower" in message and "->" in message  # base -> new, measured
    text = md.read_text()
    assert "| ack.p99 |" in text and "**slower**" in text and "| ratio | verdict |" in text


@pytest.mark.timeout(90)
def test_sweep_writes_junit_per_step_and_markdown(tmp_path: Path) -> None:
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text('name = "tiny"\nduration = 1\n[defaults]\nroom_size = 2\ndrain = 1\n'
                          '[[variants]]\nname = "py"\n[[steps]]\nusers = 2\nrate = 2\n')
    junit, md = tmp_path / "s.xml", tmp_path / "s.md"
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "sweep", str(sweep_file), "--quiet",
                          "--junit", str(junit), "--markdown", str(md)], capture_output=True, text=True,
                         timeout=80, check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "progress:" not in res.stdout  # --quiet
    _suite, cases = parse_junit(junit)
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("roombench-sweep.step", "py/s0-r0")]
    assert cases[0].find("failure") is None
    text = md.read_text()
    assert "### Step 0: rate=2, users=2" in text and "| py |" in text and "✅ pass" in text


@pytest.mark.parametrize("args,needle", [
    (["--baseline", "/nonexistent"], "not a summary.json nor a result folder"),
    (["--fail-on", "ack.p99>+10%"], "needs --baseline"),
    (["--fail-on", "ack.p99>>1"], "bad --fail-on"),
    (["--baseline", str(BASELINE), "--fail-on", "nonsense>1"], "bad --fail-on 'nonsense>1'"),
])
def test_bad_gate_options_on_run_are_one_line_before_anything_runs(tmp_path: Path, args: list[str],
                                                                   needle: str) -> None:
    res = roombench("run", "--out", str(tmp_path / "r"), *args, timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_committed_baseline_loads_and_matches_itself() -> None:
    res = roombench("compare", str(BASELINE), str(BASELINE / "summary.json"), "--fail-on", "ack.p99>+1%")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "slower" not in res.stdout and "faster" not in res.stdout and "ack.p99" in res.stdout


@pytest.mark.timeout(90)
def test_run_against_a_baseline_gates_and_reports_it(tmp_path: Path) -> None:
    md = tmp_path / "s.md"
    res = roombench("run", *SMALL, "--out", str(tmp_path / "run"), "--baseline", str(BASELINE),
                    "--fail-on", "ack.p50>+10%", "--fail-on", "acked>0", "--markdown", str(md))
    assert res.returncode == 1, res.stdout + res.stderr  # acked>0 is true for any run that acked
    # a 2 s run has too few intervals to be called slower than anything: the relative gate holds
    assert "gate ack.p50>+10%: PASS" in res.stdout and "too few intervals" in res.stdout
    assert "gate acked>0: FAIL" in res.stdout
    assert f"base: {BASELINE}" in res.stdout
    text = md.read_text()
    assert "### against the baseline" in text and "| ack.p50 |" in text and "❌ FAIL" in text
