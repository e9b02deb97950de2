"""Medians over rounds, ratios, target verdicts and the markdown table of a benchmark run."""

from __future__ import annotations

import statistics
from typing import Any

#: the figures whose median over rounds is reported (dotted: inside "lat")
FIGURES = ("acks_per_s", "deliveries_per_s", "us_cpu_per_ack", "us_cpu_per_delivery", "gen_cpu_pct",
           "gen_user_pct", "gen_sys_pct", "server_cpu_pct", "other_cpu_pct", "connected", "lat.ack.p50_ms", "lat.ack.p99_ms",
           "lat.fanout.p50_ms", "lat.fanout.p99_ms", "rss_per_conn_kb", "connects_per_s", "us_cpu_per_connect",
           "server_us_cpu_per_connect", "server_connect_cpu_pct", "server_us_cpu_per_ack", "gen_to_server")
KEY = ("suite", "tool", "connections", "room_size", "processes", "rate")
#: the yardstick (raw_client.py): left out of ratios(); floor_lines() reads every tool against it
YARDSTICK = "python-raw"


def _get(run: dict[str, Any], dotted: str) -> float | None:
    value: Any = run
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (suite, tool, connections, room size, processes): the median of every
    figure over its rounds, the rounds' spread of CPU per ack, and their errors."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault(tuple(run[k] for k in KEY), []).append(run)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(KEY, key))
        row["rounds"] = len(group)
        for fig in FIGURES:
            values = [v for v in (_get(r, fig) for r in group) if v is not None]
            row[fig] = round(statistics.median(values), 3) if values else None
        per_ack = [r["us_cpu_per_ack"] for r in group if r.get("us_cpu_per_ack")]
        row["us_cpu_per_ack_range"] = [min(per_ack), max(per_ack)] if per_ack else None
        errors: dict[str, int] = {}
        for r in group:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        row["errors"] = errors
        rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], suite: str, tool: str, **where: Any) -> dict[str, Any] | None:
    for row in rows:
        if row["suite"] == suite and row["tool"] == tool and all(row[k] == v for k, v in where.items()):
            return row
    return None


def ratios(rows: list[dict[str, Any]], connections: int = 50) -> dict[str, Any]:
    """roombench-lean against every other tool at ``connections``: how many times less CPU
    per ack it needs, and how many times more acks/s it produced."""
    lean = _find(rows, "ack", "roombench-lean", connections=connections, processes=1)
    out: dict[str, Any] = {}
    if lean is None:
        return out
    for row in rows:
        if row["suite"] == "ack" and row["connections"] == connections and row["tool"] not in ("roombench-lean", YARDSTICK):
            out[row["tool"]] = {
                "cpu_per_ack_ratio": _div(row["us_cpu_per_ack"], lean["us_cpu_per_ack"]),
                "acks_per_s_ratio": _div(lean["acks_per_s"], row["acks_per_s"]),
            }
    return out


def floor_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per connection count: every tool's CPU per ack as a multiple of the yardstick's (the
    machine factor: what the tool costs beyond what any Python client costs here)."""
    out: list[str] = []
    for raw in sorted((r for r in rows if r["suite"] == "ack" and r["tool"] == YARDSTICK and r["us_cpu_per_ack"]),
                      key=lambda r: r["connections"]):
        others = sorted((r for r in rows if r["suite"] == "ack" and r["connections"] == raw["connections"]
                         and r["processes"] == 1 and r["tool"] != YARDSTICK and r["us_cpu_per_ack"]),
                        key=lambda r: r["us_cpu_per_ack"])
        parts = [f"{r['tool']} {_div(r['us_cpu_per_ack'], raw['us_cpu_per_ack']):.2f}×" for r in others]
        out.append(f"- {raw['connections']} connections: no Python client here goes below {_f(raw['us_cpu_per_ack'])} "
                   f"µs CPU/ack ({_f(raw['acks_per_s'])} acks/s)" + (f"; the others' CPU per ack in multiples of it: {', '.join(parts)}" if parts else ""))
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def targets(rows: list[dict[str, Any]], fd_cap: int) -> dict[str, Any]:
    """The issue's floor and goal, each with the value it was judged on (None: not measured)."""
    out: dict[str, Any] = {}
    lean = _find(rows, "ack", "roombench-lean", connections=50, processes=1)
    sio = _find(rows, "ack", "locust-socketio", connections=50, processes=1)

    def verdict(name: str, value: float | None, ok: bool | None, want: str) -> None:
        out[name] = {"value": value, "want": want, "pass": ok if value is not None else None}

    if lean:
        cpu, rate, p99 = lean["us_cpu_per_ack"], lean["acks_per_s"], lean["lat.ack.p99_ms"]
        verdict("floor.us_cpu_per_ack", cpu, cpu is not None and cpu <= 33, "<= 33 µs at 50 connections")
        verdict("floor.acks_per_s", rate, rate is not None and rate >= 20_000, ">= 20,000 at 50 connections")
        verdict("floor.ack_p99_ms", p99, p99 is not None and p99 < 5, "< 5 ms at 50 connections")
        verdict("goal.us_cpu_per_ack", cpu, cpu is not None and cpu <= 20, "<= 20 µs at 50 connections")
        if sio and sio["us_cpu_per_ack"] and cpu:
            r = sio["us_cpu_per_ack"] / cpu  # judged unrounded: 9.96 is not 10
            verdict("goal.x_socketio_user", round(r, 2), r >= 10, ">= 10x Locust's SocketIOUser (CPU per ack)")
        # the absolute figures were set on a faster machine; what they stand for, measured here
        for tool, name, want in (("artillery", "floor.vs_artillery", "<= Artillery's CPU per ack, this run"),
                                 ("node-client", "goal.vs_node_client", "< Node socket.io-client's CPU per ack, this run")):
            other = _find(rows, "ack", tool, connections=50, processes=1)
            if other and other["us_cpu_per_ack"] and cpu:
                r = other["us_cpu_per_ack"] / cpu
                verdict(name, round(r, 2), r >= 1 if tool == "artillery" else r > 1, f"{want} (their µs / ours)")
        raw = _find(rows, "ack", YARDSTICK, connections=50, processes=1)
        if raw and raw["us_cpu_per_ack"]:
            v = raw["us_cpu_per_ack"]
            verdict("machine.raw_python_us_per_ack", v, v <= 33,
                    "<= 33 µs for the bare yardstick: can any Python client meet the floor on this machine?")
    for row in rows:
        if row["suite"] == "fanout" and row["tool"] == "roombench-lean":
            m = row["room_size"]
            cpu, rate, p99 = row["us_cpu_per_delivery"], row["deliveries_per_s"], row["lat.fanout.p99_ms"]
            tag = f"fanout{m}@{_offered(row):,.0f}"
            verdict(f"{tag}.us_cpu_per_delivery", cpu, cpu is not None and cpu <= 10, "<= 10 µs")
            verdict(f"{tag}.deliveries_per_s", rate, bool(rate and rate >= 80_000 and p99 is not None and p99 < 5),
                    f">= 80,000/s with p99 < 5 ms (p99 {p99} ms, server CPU {row['server_cpu_pct']} %)")
            node = next((r for r in rows if r["suite"] == "fanout" and r["tool"] == "node-client"
                         and r["room_size"] == m and r["rate"] == row["rate"]), None)
            if node and node["us_cpu_per_delivery"] and cpu:
                r = node["us_cpu_per_delivery"] / cpu
                verdict(f"{tag}.vs_node_client", round(r, 2), r > 1,
                        "< Node socket.io-client's CPU per delivery, this run (their µs / ours)")
        if row["suite"] == "idle" and row["tool"] == "roombench-lean":
            held, kb, cps = row["connected"], row["rss_per_conn_kb"], row["connects_per_s"]
            want_held = min(20_000, fd_cap)
            verdict("idle.connections", held, held is not None and held >= want_held,
                    f">= 20,000 (this machine's open-file limit allows {fd_cap})")
            verdict("idle.rss_per_conn_kb", kb, kb is not None and kb <= 15, "<= 15 KB")
            verdict("idle.connects_per_s", cps, cps is not None and cps >= 2000, ">= 2,000/s")
    return out


def _per_round(runs: list[dict[str, Any]], suite: str, tool: str, fig: str, **where: Any) -> dict[int, float]:
    """round -> ``fig`` of one tool's measurement (rounds alternate the tools' order)."""
    out: dict[int, float] = {}
    for r in runs:
        if ("error" not in r and r["suite"] == suite and r["tool"] == tool and r.get(fig)
                and all(r.get(k) == v for k, v in where.items())):
            out[r["round"]] = r[fig]
    return out


def ratio_range(runs: list[dict[str, Any]], suite: str, a: str, b: str, fig: str,
                **where: Any) -> tuple[float, float, float] | None:
    """(median, min, max) over rounds of tool a's ``fig`` / tool b's, paired round by round:
    both measured minutes apart on the same shared machine, so the pair is what compares."""
    xa, xb = _per_round(runs, suite, a, fig, **where), _per_round(runs, suite, b, fig, **where)
    vals = [xa[k] / xb[k] for k in xa if k in xb]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def cost_targets(doc: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's targets for roombench-lean, each a ratio within this run with its range over rounds."""
    runs, out = doc["runs"], {}
    lean = "roombench-lean"

    def verdict(name: str, rr: tuple[float, float, float] | None, limit: float, want: str) -> None:
        if rr is None:
            out[name] = {"value": None, "range": None, "want": want, "pass": None}
            return
        med, lo, hi = rr
        out[name] = {"value": round(med, 3), "range": [round(lo, 3), round(hi, 3)], "want": want, "pass": med <= limit}

    for n in sorted({r["connections"] for r in runs if r.get("suite") == "ack"}):
        verdict(f"cost.vs_raw@{n}", ratio_range(runs, "ack", lean, YARDSTICK, "us_cpu_per_ack", connections=n, processes=1),
                1.15, f"<= 1.15x python-raw's CPU per ack at {n} connections")
        verdict(f"cost.vs_node_client@{n}",
                ratio_range(runs, "ack", lean, "node-client", "us_cpu_per_ack", connections=n, processes=1),
                0.7, f"<= 0.7x Node socket.io-client's CPU per ack at {n} connections")
    for m, rate in sorted({(r["room_size"], r["rate"]) for r in runs if r.get("suite") == "fanout"}):
        verdict(f"cost.fanout{m}@{rate:g}.vs_node_client",
                ratio_range(runs, "fanout", lean, "node-client", "us_cpu_per_delivery", room_size=m, rate=rate),
                0.7, f"<= 0.7x Node socket.io-client's CPU per delivery, rooms of {m}")
    for rate in sorted({r["rate"] for r in runs if r.get("suite") == "equal"}):
        n = next(r["connections"] for r in runs if r.get("suite") == "equal" and r["rate"] == rate)
        tag = f"{n * rate:,.0f}/s"
        per = _per_round(runs, "equal", lean, "gen_to_server", rate=rate)
        vals = list(per.values())
        verdict(f"cost.equal@{tag}.gen_to_server",
                (statistics.median(vals), min(vals), max(vals)) if vals else None,
                0.5, f"generator CPU per ack <= 0.5x the Node server's at {tag} offered")
        for other in (YARDSTICK, "node-client"):
            rr = ratio_range(runs, "equal", lean, other, "us_cpu_per_ack", rate=rate)
            if rr is not None:
                out[f"cost.equal@{tag}.vs_{other}"] = {"value": round(rr[0], 3), "range": [round(rr[1], 3), round(rr[2], 3)],
                                                       "want": f"(read only) CPU per ack / {other}'s at equal load", "pass": None}
    verdict("cost.connect.vs_node_client",
            ratio_range(runs, "idle", lean, "node-client", "us_cpu_per_connect"), 0.7,
            "<= 0.7x Node socket.io-client's CPU per connect + join")
    kb = _per_round(runs, "idle", lean, "rss_per_conn_kb")
    verdict("cost.idle.rss_per_conn_kb", (statistics.median(kb.values()), min(kb.values()), max(kb.values())) if kb else None,
            14, "<= 14 KB per idle connection")
    return out


def _offered(row: dict[str, Any]) -> float:
    """Measured deliveries/s a fan-out row offered: connections x rate x (room size - 1)."""
    return round(row["connections"] * (row["rate"] or 0) * (row["room_size"] - 1), -2)


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def markdown(doc: dict[str, Any]) -> str:
    """The run as markdown: machine, one table per suite, ratios and targets."""
    m, o, rows = doc["machine"], doc["options"], doc["medians"]
    mem = (m.get("memory_bytes") or 0) / 2**30
    lines = [f"## Generator benchmark {doc['created']}", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, {mem:.0f} GiB, {m['platform']}; "
             f"node {m.get('node')}, Python {m['versions']['python']}. Server: {doc['server']}. "
             f"Medians of {o['rounds']} alternating round(s), {o['duration']:g} s windows after {o['warmup']:g} s warm-up; "
             "CPU = the generator's process tree (user + system) from /proc, per generator process unless noted; "
             "other CPU % = what the rest of the machine used meanwhile (a shared machine is noisy).", ""]
    short = shortfalls(doc["runs"])
    if short:
        lines += [f"**{len(short)} measurement(s) ran short of connections or counted errors** (their figures "
                  "are not like for like with the others'): " + "; ".join(short), ""]
    lines += _table(rows, "ack", "Acks: closed loop, one message in flight per connection, each in its own room "
                    "(the server acks and echoes new_message to the sender)",
                    ["connections", "tool", "acks/s", "µs CPU/ack", "(user/sys %)", "p50 ms", "p99 ms",
                     "gen CPU %", "server CPU %", "other CPU %"],
                    lambda r: [r["connections"], r["tool"], _f(r["acks_per_s"]), _f(r["us_cpu_per_ack"]),
                               f"{_f(r['gen_user_pct'], 0)}/{_f(r['gen_sys_pct'], 0)}", _f(r["lat.ack.p50_ms"], 2),
                               _f(r["lat.ack.p99_ms"], 2), _f(r["gen_cpu_pct"], 0), _f(r["server_cpu_pct"], 0),
                               _f(r["other_cpu_pct"], 0)],
                    lambda r: (r["connections"], r["tool"]), processes=1)
    if doc.get("ratios"):
        lines += ["Ratios at 50 connections (roombench-lean vs each tool): CPU per ack (theirs / ours), acks/s (ours / theirs)", "",
                  "| tool | CPU per ack × | acks/s × |", "|---|---|---|"]
        lines += [f"| {t} | {_f(v['cpu_per_ack_ratio'], 2)} | {_f(v['acks_per_s_ratio'], 2)} |" for t, v in doc["ratios"].items()]
        lines.append("")
    floor = floor_lines(rows)
    if floor:
        lines += [f"Machine factor: {YARDSTICK} is a yardstick, not a load generator (raw_client.py: one epoll "
                  "loop, no gevent, Locust, ledger or histograms), the cheapest Python client this machine allows:", "",
                  *floor, ""]
    lines += _table(rows, "fanout", "Fan-out: rooms of M, each member sending open loop; a measured delivery is a "
                    "new_message at a member other than the sender (latency from the intended send time)",
                    ["room", "conns", "offered/s", "tool", "deliveries/s", "µs CPU/delivery", "p50 ms", "p99 ms", "acks/s",
                     "gen CPU %", "server CPU %"],
                    lambda r: [r["room_size"], r["connections"], _f(_offered(r)), r["tool"], _f(r["deliveries_per_s"]),
                               _f(r["us_cpu_per_delivery"], 2), _f(r["lat.fanout.p50_ms"], 2),
                               _f(r["lat.fanout.p99_ms"], 2), _f(r["acks_per_s"]), _f(r["gen_cpu_pct"], 0),
                               _f(r["server_cpu_pct"], 0)],
                    lambda r: (r["room_size"], r["rate"] or 0, r["tool"]))
    lines += _table(rows, "idle", "Idle connections: connected and joined, nothing sent",
                    ["tool", "held", "RSS KB/conn", "connects/s", "µs CPU/connect", "server µs CPU/connect",
                     "server CPU % while connecting", "idle gen CPU %"],
                    lambda r: [r["tool"], _f(r["connected"]), _f(r["rss_per_conn_kb"], 1), _f(r["connects_per_s"]),
                               _f(r["us_cpu_per_connect"], 0), _f(r["server_us_cpu_per_connect"], 0),
                               _f(r["server_connect_cpu_pct"], 0), _f(r["gen_cpu_pct"], 1)],
                    lambda r: r["tool"])
    lines += _table(rows, "processes", "Processes: roombench-lean, same total connections in 1 and 2 generator "
                    "processes (totals over the processes; CPU includes Locust's master)",
                    ["processes", "connections", "acks/s", "µs CPU/ack", "p99 ms", "gen CPU %", "server CPU %"],
                    lambda r: [r["processes"], r["connections"], _f(r["acks_per_s"]), _f(r["us_cpu_per_ack"]),
                               _f(r["lat.ack.p99_ms"], 2), _f(r["gen_cpu_pct"], 0), _f(r["server_cpu_pct"], 0)],
                    lambda r: r["processes"])
    lines += _table(rows, "equal", "Equal load: every tool offered the same open-loop rate (rooms of one; latency "
                    "from the intended send time); gen/server = generator CPU per ack / the Node server's, same window",
                    ["offered/s", "conns", "tool", "acks/s", "µs CPU/ack", "range", "server µs/ack", "gen/server",
                     "p50 ms", "p99 ms", "gen CPU %", "server CPU %"],
                    lambda r: [_f(r["connections"] * (r["rate"] or 0)), r["connections"], r["tool"], _f(r["acks_per_s"]),
                               _f(r["us_cpu_per_ack"]), _range(r["us_cpu_per_ack_range"]), _f(r["server_us_cpu_per_ack"]),
                               _f(r["gen_to_server"], 3), _f(r["lat.ack.p50_ms"], 2), _f(r["lat.ack.p99_ms"], 2),
                               _f(r["gen_cpu_pct"], 0), _f(r["server_cpu_pct"], 0)],
                    lambda r: (r["rate"] or 0, r["tool"]))
    if doc.get("scaling"):
        lines += [f"Scaling: {doc['scaling']}", ""]
    if doc.get("cost_targets"):
        lines += ["Cost targets (issue 14; ratios of roombench-lean within this run, median and range over rounds "
                  "paired round by round):", "", "| target | value | range | wanted | verdict |", "|---|---|---|---|---|"]
        for name, t in doc["cost_targets"].items():
            mark = {True: "PASS", False: "FAIL", None: "–"}[t["pass"]]
            lines.append(f"| {name} | {_f(t['value'], 3)} | {_range(t['range'])} | {t['want']} | {mark} |")
        lines.append("")
    if doc.get("targets"):
        lines += ["Targets (roombench-lean):", "", "| target | value | wanted | verdict |", "|---|---|---|---|"]
        for name, t in doc["targets"].items():
            mark = {True: "PASS", False: "FAIL", None: "–"}[t["pass"]]
            lines.append(f"| {name} | {_f(t['value'], 2)} | {t['want']} | {mark} |")
        lines.append("")
    for suites, what in ((("ack", "profile"), "closed loop"), (("profile-equal",), "equal load")):
        profiled = [r for r in doc["runs"] if r.get("profile") and r["tool"] == "roombench-lean" and r["suite"] in suites]
        if not profiled:
            continue
        r = max(profiled, key=lambda r: r["connections"] == 50)
        rate = f", {r['connections'] * r['rate']:,.0f}/s offered" if r.get("rate") else ""
        lines += [f"Profile of roombench-lean, {what}, at {r['connections']} connections{rate} (py-spy, % of samples; "
                  "C time is charged to the Python line that called it):", "", "| self % | function | | inclusive % | function |",
                  "|---|---|---|---|---|"]
        for (f1, p1), (f2, p2) in zip(r["profile"]["self"], r["profile"]["inclusive"]):
            lines.append(f"| {p1} | {f1} | | {p2} | {f2} |")
        lines.append("")
    failed = [r for r in doc["runs"] if "error" in r]
    if failed:
        lines += [f"{len(failed)} measurement(s) failed: " + "; ".join(
            f"{r['tool']} {r['suite']} {r['connections']}: {r['error'].splitlines()[0]}" for r in failed), ""]
    return "\n".join(lines)


def shortfalls(runs: list[dict[str, Any]]) -> list[str]:
    """One line per measured run that had fewer connections up than it asked for, or errors:
    a row measured on 623 of 1,000 connections must not pass for a 1,000-connection figure."""
    out = []
    for r in runs:
        if "error" in r:
            continue  # listed as failed at the end
        want, got, errors = r.get("connections"), r.get("connected"), r.get("errors") or {}
        if (want is None or got is None or got >= want) and not errors:
            continue
        lacks = [f"{got:,} of {want:,} connected"] if got is not None and want is not None and got < want else []
        lacks += [f"{k} {v:,}" for k, v in sorted(errors.items())]
        out.append(f"{r['tool']} {r['suite']} {want} conns round {r.get('round', 0) + 1}: {', '.join(lacks)}")
    return out


def _range(r: list[float] | None) -> str:
    return f"{_f(r[0], 2)}–{_f(r[1], 2)}" if r else "–"


def _table(rows: list[dict[str, Any]], suite: str, title: str, head: list[str], cells: Any, order: Any,
           **where: Any) -> list[str]:
    chosen = sorted((r for r in rows if r["suite"] == suite and all(r[k] == v for k, v in where.items())), key=order)
    if not chosen:
        return []
    out = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in cells(r)) + " |" for r in chosen]
    return out + [""]
