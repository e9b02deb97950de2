"""summary.json: the versioned result of one run, SLO verdicts, and the printed table.

Schema history (``schema`` key):
  roombench.summary/1 — first version.
Readers accept every version listed in ``READABLE``.
"""

from __future__ import annotations

import operator
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

from roombench.exceptions import UsageError
from roombench.measure.machine import git_revision, versions
from roombench.measure.metrics import METRICS, count_over, percentiles
from roombench.measure.report import ProcessReport
from roombench.measure.storms import format_storms, summarize as summarize_storms

SCHEMA = "roombench.summary/1"
READABLE = (SCHEMA,)
STATS = ("count", "mean", "p50", "p90", "p99", "p999", "max")

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_SLO_RE = re.compile(r"^\s*([a-z_]+)(?:\.([a-z0-9_]+))?\s*(<=|>=|==|!=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Slo:
    """One gate such as ``ack.p99<50`` (ms) or ``lost==0``."""

    expr: str
    name: str
    stat: str | None
    op: str
    limit: float

    def value(self, summary: dict[str, Any]) -> float | None:
        """The summary's value this gate looks at (None: no samples)."""
        if self.name in METRICS:
            return summary["latency_ms"][self.name][self.stat or "p99"]
        if self.name == "errors":
            return sum(summary["errors"].values()) if self.stat in (None, "total") else summary["errors"].get(self.stat, 0)
        if self.name == "delivery":
            return summary["delivery"][self.stat or ""]
        if self.name == "generator":
            return summary["metadata"]["generator"][self.stat or ""]
        return summary["delivery"][self.name]

    def verdict(self, summary: dict[str, Any]) -> dict[str, Any]:
        """{"slo", "value", "ok"}; a gate on a metric without samples fails."""
        value = self.value(summary)
        ok = value is not None and _OPS[self.op](value, self.limit)
        return {"slo": self.expr, "value": value, "ok": bool(ok)}


def parse_slo(expr: str) -> Slo:
    """Parse ``name[.stat] OP number``; UsageError names what is wrong."""
    m = _SLO_RE.match(expr)
    if not m:
        raise UsageError(f"bad --slo {expr!r}: expected e.g. 'ack.p99<50' or 'lost==0'")
    name, stat, op, limit = m.groups()
    delivery_keys = set(_delivery_keys())
    if name in METRICS:
        if stat not in (None, *STATS):
            raise UsageError(f"bad --slo {expr!r}: {stat!r} is not one of {', '.join(STATS)}")
    elif name == "delivery" and stat not in delivery_keys:
        raise UsageError(f"bad --slo {expr!r}: unknown delivery counter {stat!r}")
    elif name == "generator" and stat not in ("cpu_pct", "loop_lag_p99_ms"):
        raise UsageError(f"bad --slo {expr!r}: generator.{stat} is not gateable")
    elif name not in ("errors", "delivery", "generator") and (stat or name not in delivery_keys):
        raise UsageError(f"bad --slo {expr!r}: unknown metric {name!r} (latency: {', '.join(METRICS)})")
    return Slo(expr.strip(), name, stat, op, float(limit))


def _delivery_keys() -> list[str]:
    from roombench.chat.ledger import LedgerCounts

    return [*LedgerCounts().to_dict(), *COUNTED_DELIVERY]


#: delivery keys that come from the generator's counters, not the ledger
COUNTED_DELIVERY = ("sends_skipped_offline", "forced_drops", "server_resets")


#: a generator is saturated (its numbers are suspect) past either threshold
SATURATED_LAG_P99_MS = 20.0
SATURATED_CPU_FRACTION = 0.90
#: ... and the lag's only with this many probes late past it: with 20 probes a second, a
#: short run's p99 is its single worst probe, and one late probe is one hiccup (a GC pass,
#: the OS giving the core away once), not a generator that cannot keep up
SATURATED_LAG_MIN_LATE = 2


def saturating_probes(lag: HdrHistogram) -> int:
    """Loop-lag probes (µs) late past SATURATED_LAG_P99_MS when they say the generator could
    not keep up (their p99 past it, and at least SATURATED_LAG_MIN_LATE of them); else 0."""
    if not lag.total_count or percentiles(lag, [99.0])[99.0] / 1000 <= SATURATED_LAG_P99_MS:
        return 0
    late = count_over(lag, SATURATED_LAG_P99_MS * 1000)
    return late if late >= SATURATED_LAG_MIN_LATE else 0


def saturation(merged: ProcessReport) -> list[str]:
    """Why this run's numbers cannot be trusted (empty: they can)."""
    why = []
    cpu = merged.cpu_max_fraction or 0.0
    if late := saturating_probes(merged.loop_lag):
        why.append(f"event-loop lag p99 {merged.loop_lag_p99_ms:.1f} ms > {SATURATED_LAG_P99_MS:g} ms "
                   f"({late} of {merged.loop_lag.total_count} probes late)")
    if cpu > SATURATED_CPU_FRACTION:
        why.append(f"a generator process used {100 * cpu:.0f}% of a core "
                   f"(> {100 * SATURATED_CPU_FRACTION:.0f}%)")
    return why



def build_summary(merged: ProcessReport, *, target: str, scenario: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary dict from the merged process reports (see ProcessReport.merge)."""
    metrics = merged.metrics
    wall = merged.wall_s or 1e-9
    delivery = {**merged.ledger.to_dict()}
    for key in COUNTED_DELIVERY:
        delivery[key] = merged.counters.get(key, 0)
    reasons = saturation(merged)
    return {
        "schema": SCHEMA,
        "metadata": {
            "started": merged.started,
            "duration_s": round(wall, 3),
            "target": target,
            "scenario": scenario,
            "users": merged.users,
            "versions": versions(),
            "git_revision": git_revision(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "generator": {
                "processes": merged.processes,
                "cpu_s": round(merged.cpu_s, 3),
                "cpu_pct": round(100.0 * merged.cpu_s / wall, 1),
                "loop_lag_p99_ms": round(merged.loop_lag_p99_ms, 3),
                "saturated": bool(reasons),
                "saturation": reasons,
            },
            **(extra or {}),
        },
        "latency_ms": (latency := metrics.summary()),
        "delivery": delivery,
        "recovery": recovery_section(merged.counters, delivery, latency.get("recover")),
        "errors": dict(merged.errors),
        "error_samples": dict(merged.error_samples),
        "counters": dict(merged.counters),
        "storms": summarize_storms(merged.storms, merged.users, merged.started),
        "histograms": metrics.encode(),
        "slo": [],
    }


def recovery_section(counters: Any, delivery: dict[str, Any], time_ms: dict[str, Any] | None) -> dict[str, Any]:
    """Socket.IO connection state recovery (--recovery csr|auto), per reconnect and per message:
    ``reconnects`` counted, ``recovered`` by the server, ``not_recovered`` by reason
    (see transport.base.Recovery), ``replayed`` events, ``backfilled_after_recovery``
    (messages a recovered reconnect missed and the auto backfill found), the delivery
    ledger's split of ``recovered`` messages, and the ``recover`` latency (drop -> recovered)."""
    prefix = "recovery_not_recovered."
    reconnects = int(counters.get("recovery_reconnects", 0))
    recovered = int(counters.get("recovery_recovered", 0))
    return {
        "reconnects": reconnects,
        "recovered": recovered,
        "recovered_pct": round(100.0 * recovered / reconnects, 2) if reconnects else None,
        "not_recovered": {k[len(prefix):]: int(v) for k, v in sorted(counters.items()) if k.startswith(prefix)},
        "replayed": int(counters.get("recovery_replayed", 0)),
        "backfilled_after_recovery": int(counters.get("recovery_backfilled_after", 0)),
        "messages": {"replay": delivery.get("recovered_replay", 0), "backfill": delivery.get("recovered_backfill", 0),
                     "replay_backfill_overlap": delivery.get("replay_backfill_overlap", 0)},
        "time_ms": time_ms or {},
    }


def format_recovery(summary: dict[str, Any]) -> str | None:
    """The table's recovery line; None for a run without --recovery csr|auto (or an older summary)."""
    r = summary.get("recovery")
    if not r or not r["reconnects"]:
        return None
    why = " ".join(f"{k}={v}" for k, v in r["not_recovered"].items()) or "-"
    t, m = r["time_ms"], r["messages"]
    return (f"recovery: {r['recovered']}/{r['reconnects']} reconnects recovered ({_fmt(r['recovered_pct'])}%), "
            f"not: {why}; replayed={r['replayed']}; messages recovered by replay={m['replay']} "
            f"backfill={m['backfill']} (after a recovery {r['backfilled_after_recovery']}), "
            f"overlap={m['replay_backfill_overlap']}; recover p50={_fmt(t.get('p50'))} p99={_fmt(t.get('p99'))} ms")


def apply_slos(summary: dict[str, Any], slos: list[Slo]) -> bool:
    """Record every verdict in the summary; True when all hold."""
    summary["slo"] = [s.verdict(summary) for s in slos]
    return all(v["ok"] for v in summary["slo"])


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; UsageError (one line) if it is missing or malformed."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read a summary.json of any readable schema version; UsageError otherwise."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") not in READABLE:
        raise UsageError(f"{path} is not a roombench summary (schema {data.get('schema') if isinstance(data, dict) else None!r})")
    return data


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return str(v)


def format_table(summary: dict[str, Any]) -> str:
    """The compact table printed after a run."""
    lines = [f"{'metric':<13}{'count':>9}{'p50 ms':>10}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"]
    for name, s in summary["latency_ms"].items():
        if s["count"]:
            lines.append(f"{name:<13}{s['count']:>9}" + "".join(f"{_fmt(s[k]):>{w}}" for k, w in
                         (("p50", 10), ("p90", 9), ("p99", 9), ("p999", 9), ("max", 9))))
    d = summary["delivery"]
    lines.append("delivery: " + "  ".join(f"{k}={d[k]}" for k in (
        "sent", "acked", "ack_timeouts", "expected", "delivered_live", "live_missed", "recovered", "lost",
        "duplicates", "out_of_order")))
    if storms := format_storms(summary.get("storms", [])):
        lines.append(storms)
    if recovery := format_recovery(summary):
        lines.append(recovery)
    if d.get("server_resets"):
        lines.append(f"server resets: {d['server_resets']} (ids went backwards: the server restarted; rooms were "
                     "re-based and backfilled from its new history, so lost counts only what it really lost)")
    errors = summary["errors"]
    lines.append("errors: " + ("  ".join(f"{k}={v}" for k, v in sorted(errors.items())) if errors else "none"))
    gen = summary["metadata"]["generator"]
    lines.append(f"generator: cpu {gen['cpu_pct']}% of a core over {summary['metadata']['duration_s']} s, "
                 f"{gen['processes']} process(es), {summary['metadata']['users']} users")
    for why in gen.get("saturation", []):
        lines.append(f"WARNING: generator saturated, latencies are inflated: {why}")
    for v in summary["slo"]:
        lines.append(f"SLO {v['slo']}: {'PASS' if v['ok'] else 'FAIL'} (value {_fmt(v['value'])})")
    return "\n".join(lines)
