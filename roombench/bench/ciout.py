"""CI-native outputs: JUnit XML (one testcase per SLO / regression gate / sweep step) and
Markdown (the summary table and verdicts, for a CI job's summary page).

JUnit XML has no single official schema; we write the subset every CI reader accepts (the
Jenkins / Ant layout that GitHub, GitLab and Azure parse): ``<testsuites>`` → ``<testsuite
name tests failures errors skipped time timestamp>`` → ``<testcase classname name time>``
with a ``<failure message type>`` child (its text: the measured value and the limit).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roombench.exceptions import UsageError
from roombench.bench.compare import Comparison, Row


@dataclass(frozen=True)
class Check:
    """One testcase: ``kind`` is its JUnit classname suffix (slo, gate, step)."""

    kind: str
    name: str
    ok: bool
    message: str


def slo_checks(summary: dict[str, Any]) -> list[Check]:
    """One check per SLO verdict in a summary (run's --slo, and --abort-on-fail's reason)."""
    out = [Check("slo", v["slo"], bool(v["ok"]), f"measured {_num(v['value'])} (SLO {v['slo']})")
           for v in summary.get("slo", [])]
    aborted = summary.get("metadata", {}).get("aborted")
    if aborted:
        out.append(Check("abort", "abort-on-fail", False, f"run stopped early: {aborted['reason']}"))
    return out


def gate_checks(c: Comparison) -> list[Check]:
    """One check per regression gate and compared key."""
    return [Check("gate", g.name, g.ok, g.detail) for g in c.gates]


def step_checks(meta: dict[str, Any]) -> list[Check]:
    """A sweep's steps: done ones pass, failed ones fail with the error."""
    failed, interrupted = meta.get("failed", {}), meta.get("interrupted", {})
    out = []
    for item in meta["plan"]:
        d = item["dir"]
        if d in meta["done"]:
            out.append(Check("step", d, True, "done"))
        elif d in failed:
            out.append(Check("step", d, False, failed[d]))
        elif d in interrupted:
            out.append(Check("step", d, False, f"interrupted by {interrupted[d]}"))
    return out


def junit_xml(checks: list[Check], suite: str = "roombench", time_s: float = 0.0) -> bytes:
    """The JUnit XML document."""
    failures = sum(not c.ok for c in checks)
    root = ET.Element("testsuites", name=suite, tests=str(len(checks)), failures=str(failures),
                      errors="0", time=f"{time_s:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures),
                       errors="0", skipped="0", time=f"{time_s:.3f}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{c.kind}", name=c.name, time="0")
        if c.ok:
            ET.SubElement(tc, "system-out").text = c.message
        else:
            ET.SubElement(tc, "failure", message=c.message, type=f"{c.kind}-failed").text = c.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_text(path: str | Path, data: str | bytes) -> None:
    """Write a file atomically (temp file + rename), like summary.write_json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _checks_md(checks: list[Check]) -> list[str]:
    if not checks:
        return []
    return ["", *_table(["check", "result", "detail"],
                        [[f"`{c.name}`", "✅ pass" if c.ok else "❌ FAIL", c.message.replace("|", "\\|")]
                         for c in checks])]


def run_markdown(summary: dict[str, Any], comparison: Comparison | None = None, title: str = "roombench run") -> str:
    """A run: latency table, delivery counts, SLOs (and gates against a baseline)."""
    meta = summary["metadata"]
    lines = [f"## {title}", "", (f"Target `{meta.get('target')}`, {meta.get('users')} users, "
                                 f"{meta.get('duration_s')} s measured; latencies in ms."), ""]
    stats = ("count", "p50", "p90", "p99", "p999", "max")
    lines += _table(["metric", *stats], [[name, *(_num(s[k]) for k in stats)]
                                         for name, s in summary["latency_ms"].items() if s["count"]])
    d = summary["delivery"]
    lines += ["", "Delivery: " + ", ".join(f"{k} {d.get(k, 0)}" for k in (
        "sent", "acked", "ack_timeouts", "delivered_live", "recovered", "lost", "duplicates")) +
              f"; errors {sum(summary['errors'].values())}."]
    for why in meta.get("generator", {}).get("saturation", []):
        lines.append(f"\n> **Warning**: generator saturated, latencies are inflated: {why}")
    checks = slo_checks(summary) + (gate_checks(comparison) if comparison else [])
    lines += _checks_md(checks)
    if comparison is not None and comparison.rows:
        lines += ["", compare_markdown(comparison, title="against the baseline")]
    return "\n".join(lines) + "\n"


def compare_markdown(c: Comparison, title: str = "roombench compare") -> str:
    """base / new / ratio / verdict per row, then the gates."""
    lines = [f"### {title}", "", f"Base `{c.base.path}`, new `{c.new.path}`.", ""]

    def cells(r: Row) -> list[str]:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None and math.isfinite(r.ratio) else "-"
        verdict = f"**{r.verdict}**" if r.verdict in ("faster", "slower") else r.verdict
        key = [r.key] if c.keyed else []
        return [*key, r.name, _num(r.base), _num(r.new), ratio, verdict, r.why if r.test else ""]

    head = ["variant, step"] if c.keyed else []
    lines += _table([*head, "metric", "base", "new", "ratio", "verdict", "why"], [cells(r) for r in c.rows])
    lines += [f"\n> **Note**: {n}" for n in c.notes]
    if c.gates and not title.startswith("against"):
        lines += _checks_md(gate_checks(c))
    return "\n".join(lines) + "\n"


def sweep_markdown(folder: Path) -> str:
    """A sweep: each step's table (report.step_table) and the steps' outcomes."""
    from roombench.bench.report import load, step_table

    sw = load(folder)
    lines = [f"## roombench sweep {folder.name}", ""]
    for s in sw.steps:
        step = sw.meta["sweep"]["steps"][s]
        lines += [f"### Step {s}: " + ", ".join(f"{k}={v}" for k, v in step.items()), "", *step_table(sw, s), ""]
    lines += _checks_md(step_checks(sw.meta))
    return "\n".join(lines) + "\n"


@dataclass
class CiOutputs:
    """A run's --baseline / --fail-on / --junit / --markdown, applied once summary.json is written."""

    baseline: Path | None = None
    fail_on: tuple[str, ...] = ()
    junit: Path | None = None
    markdown: Path | None = None

    def validate(self) -> None:
        """UsageError for a bad gate or a missing baseline, before the run starts."""
        from roombench.bench.compare import load_side, parse_gate

        gates = [parse_gate(g) for g in self.fail_on]
        if any(g.relative for g in gates) and self.baseline is None:
            raise UsageError("a relative --fail-on (+N% or +N ms) needs --baseline FILE")
        if self.baseline is not None:
            load_side(self.baseline)

    def finish(self, out: Path, summary: dict[str, Any], quiet: bool = False) -> bool:
        """Gates against the baseline (absolute gates on the run alone), then the files; True if all hold."""
        from roombench.bench.compare import compare, format_table, parse_gate

        gates = [parse_gate(g) for g in self.fail_on]
        comparison = compare(self.baseline if self.baseline is not None else out, out, gates)
        if self.baseline is None:
            comparison.rows = []  # a run against itself: only the absolute gates mean anything
        if not quiet and (comparison.rows or comparison.gates):
            print(format_table(comparison))
        checks = slo_checks(summary) + gate_checks(comparison)
        if self.junit is not None:
            write_text(self.junit, junit_xml(checks, time_s=float(summary["metadata"].get("duration_s", 0.0))))
        if self.markdown is not None:
            write_text(self.markdown, run_markdown(summary, comparison))
        return comparison.ok
