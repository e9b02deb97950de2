"""roombench in Locust's web UI: a "roombench" tab, JSON routes, additions to the reports.

Only Locust's documented extension points are used (``examples/extend_web_ui`` of Locust):

* ``web_ui.template_args["extended_tabs" | "extended_tables" | "extended_csv_files"]``:
  the React UI's extra tab (a table) and extra download links;
* an ``after_request`` hook that adds ``extended_stats`` (the tab's rows) to the
  ``/stats/requests`` JSON the UI polls every 2 s, and roombench's section to the HTML
  report of ``/stats/report``;
* Flask routes on ``web_ui.app`` behind ``web_ui.auth_required_if_enabled``:
  ``/roombench/summary`` (the summary.json schema, live while running, final after stop),
  ``/roombench/summary.json`` (the same, as a download), ``/roombench/csv`` and
  ``/roombench/`` (a page of its own with the chart over time, which the tab's table
  component cannot draw).

The numbers are formatted from the summary exactly (no rounding beyond the summary's own
3 decimals), so the page and the JSON can be compared digit for digit.
"""

from __future__ import annotations

import csv
import html
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

TAB = "roombench"
STATIC = Path(__file__).parent / "static"
#: the tab's table: one row per number, a section and a name saying what it is
STRUCTURE = [
    {"key": "section", "title": "section"},
    # not "name": the UI's table sorts by a "name" column by default, and the rows' order is meaning
    {"key": "item", "title": "name"},
    {"key": "value", "title": "count / value"},
    {"key": "p50", "title": "p50 ms"},
    {"key": "p90", "title": "p90 ms"},
    {"key": "p99", "title": "p99 ms"},
    {"key": "p999", "title": "p99.9 ms"},
    {"key": "max", "title": "max ms"},
]
PCTS = ("p50", "p90", "p99", "p999", "max")
#: delivery counters that are bad news when non-zero: flagged on every page
ALARMS = ("lost", "duplicates", "ack_timeouts", "ack_errors", "unexpected")
BACKFILL = ("fetch", "merge", "backfill")
FLAG = "\u26a0"

SummarySource = Callable[[], "dict[str, Any] | None"]


def fmt(v: Any) -> str:
    """A summary value as the page shows it: the JSON number's own digits, '-' for None."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _row(section: str, name: str, value: Any = None, **pcts: Any) -> dict[str, str]:
    row = {"section": section, "item": name, "value": fmt(value) if value is not None else ""}
    for k in PCTS:
        row[k] = fmt(pcts[k]) if k in pcts else ""
    return row


def rows(summary: dict[str, Any] | None) -> list[dict[str, str]]:
    """The tab's rows for a summary (None: no test has started yet)."""
    if summary is None:
        return [_row("status", "no test yet", "start a swarm; roombench's numbers appear here")]
    meta = summary["metadata"]
    live = meta.get("locust", {})
    gen = meta["generator"]
    out = [_row("status", "test", f"#{live.get('test', 1)} {live.get('state', 'final')}"),
           _row("status", "users", meta["users"]), _row("status", "processes", gen["processes"])]
    if live.get("summary_file"):
        out.append(_row("status", "summary file", live["summary_file"]))
    if gen.get("saturated"):
        out += [_row("notice", f"{FLAG} SATURATED", why + ": latencies are inflated") for why in gen["saturation"]]
    out += [_row("notice", FLAG, text) for text in live.get("notices", [])]
    for w in live.get("dead_workers", []):
        last = (f"last report {w['age_s']} s before the end held users={w['users']} sent={w['sent']} "
                f"acked={w['acked']}" if w["age_s"] is not None else "no report ever received")
        out.append(_row("notice", f"{FLAG} worker lost", f"{w['id']}: {last}; not in the totals"))
    for name, s in summary["latency_ms"].items():
        if s["count"]:
            out.append(_row("backfill" if name in BACKFILL else "latency", name, s["count"],
                            **{k: s[k] for k in PCTS}))
    for key, v in summary["delivery"].items():
        flagged = key in ALARMS and v
        out.append(_row("delivery", f"{key} {FLAG}" if flagged else key, v))
    for kind, n in sorted(summary["errors"].items()):
        out.append(_row("errors", f"{kind} {FLAG}", n))
    for key, n in sorted(summary.get("counters", {}).items()):
        out.append(_row("counters", key, n))
    out += [_row("generator", "all cpu_pct", gen["cpu_pct"]),
            _row("generator", "all loop_lag_p99_ms", gen["loop_lag_p99_ms"]),
            _row("generator", "all saturated", gen["saturated"])]
    for w in live.get("workers", []):
        out += [_row("generator", f"{w['id']} {k}", w[k]) for k in ("users", "cpu_pct", "loop_lag_p99_ms", "saturated")]
    for p in live.get("series", [])[-10:]:
        out.append(_row("interval", time.strftime("%H:%M:%S", time.gmtime(p["start"])),
                        f"ack p99 {fmt(p['ack_p99_ms'])} ms, fanout p99 {fmt(p['fanout_p99_ms'])} ms, "
                        f"{fmt(p['deliveries_per_s'])} deliveries/s, {fmt(p['acks_per_s'])} acks/s"))
    out.append(_row("status", "chart over time", "open /roombench/ (link in Download Data)"))
    return out


def render_html(summary: dict[str, Any]) -> str:
    """roombench's section for Locust's HTML report (plain HTML, no script)."""
    e = html.escape
    parts = ['<section id="roombench" style="font-family:sans-serif;margin:2em">',
             "<h2>roombench (HDR histograms, delivery ledger)</h2>"]
    gen = summary["metadata"]["generator"]
    for why in gen.get("saturation", []):
        parts.append(f'<p style="color:#c00"><b>{FLAG} generator saturated:</b> {e(why)}; latencies are inflated</p>')
    parts.append('<table border="1" cellpadding="4" style="border-collapse:collapse"><tr><th>metric</th>'
                 "<th>count</th>" + "".join(f"<th>{k} ms</th>" for k in PCTS) + "</tr>")
    for name, s in summary["latency_ms"].items():
        if s["count"]:
            parts.append(f"<tr><td>{e(name)}</td><td>{s['count']}</td>"
                         + "".join(f"<td>{fmt(s[k])}</td>" for k in PCTS) + "</tr>")
    parts.append('</table><h3>delivery</h3><table border="1" cellpadding="4" style="border-collapse:collapse">')
    for key, v in summary["delivery"].items():
        style = ' style="color:#c00;font-weight:bold"' if key in ALARMS and v else ""
        parts.append(f"<tr{style}><td>{e(key)}</td><td>{v}</td></tr>")
    parts.append("</table><h3>errors</h3><p>" + (", ".join(f"{e(k)}={v}" for k, v in sorted(summary["errors"].items()))
                                                 or "none") + "</p>")
    parts.append(f"<p>generator: cpu {gen['cpu_pct']}% of a core, loop lag p99 {gen['loop_lag_p99_ms']} ms, "
                 f"{gen['processes']} process(es), {summary['metadata']['users']} users</p></section>")
    return "\n".join(parts)


def add_to_html(page: str, summary: dict[str, Any]) -> str:
    """Locust's report page with roombench's section at the end of its body."""
    section = render_html(summary)
    i = page.rfind("</body>")
    return page[:i] + section + page[i:] if i >= 0 else page + section


def add_to_html_file(path: str | Path, summary: dict[str, Any]) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(add_to_html(p.read_text(encoding="utf-8"), summary), encoding="utf-8")
    tmp.replace(p)


def csv_text(summary: dict[str, Any]) -> str:
    """roombench's percentiles and ledger as CSV (beside Locust's own CSV files)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "name", "count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"])
    for name, s in summary["latency_ms"].items():
        w.writerow(["latency", name, s["count"], *(fmt(s[k]) if s["count"] else "" for k in ("mean", *PCTS))])
    for key, v in summary["delivery"].items():
        w.writerow(["delivery", key, v])
    for kind, n in sorted(summary["errors"].items()):
        w.writerow(["error", kind, n])
    gen = summary["metadata"]["generator"]
    for key in ("cpu_pct", "loop_lag_p99_ms", "saturated"):
        w.writerow(["generator", key, gen[key]])
    return buf.getvalue()


def install(environment: Any, source: SummarySource) -> None:
    """Add the tab, the routes and the report hooks to ``environment.web_ui`` (if any)."""
    web_ui = environment.web_ui
    if web_ui is None:
        return
    from flask import Response, request, send_file

    web_ui.template_args["extended_tabs"] = [{"title": "roombench", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": STRUCTURE}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./roombench/summary.json", "title": "Download roombench summary.json"},
        {"href": "./roombench/csv", "title": "Download roombench CSV (HDR percentiles, ledger)"},
        {"href": "./roombench/", "title": "roombench live page (chart over time)"},
    ]
    _fix_template_args(web_ui)
    app = web_ui.app

    def _json(data: Any, status: int = 200, download: str | None = None) -> Response:
        resp = Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status, mimetype="application/json")
        if download:
            resp.headers["Content-Disposition"] = f"attachment;filename={download}"
        return resp

    @app.route("/roombench/summary")
    @web_ui.auth_required_if_enabled
    def roombench_summary() -> Response:
        summary = source()
        return _json(summary) if summary is not None else _json({"error": "no test has started yet"}, 404)

    @app.route("/roombench/summary.json")
    @web_ui.auth_required_if_enabled
    def roombench_summary_download() -> Response:
        summary = source()
        if summary is None:
            return _json({"error": "no test has started yet"}, 404)
        test = summary["metadata"].get("locust", {}).get("test", 1)
        return _json(summary, download=f"roombench-summary-test{test}.json")

    @app.route("/roombench/csv")
    @web_ui.auth_required_if_enabled
    def roombench_csv() -> Response:
        summary = source()
        if summary is None:
            return _json({"error": "no test has started yet"}, 404)
        resp = Response(csv_text(summary), mimetype="text/csv")
        resp.headers["Content-Disposition"] = "attachment;filename=roombench.csv"
        return resp

    @app.route("/roombench/")
    @web_ui.auth_required_if_enabled
    def roombench_page() -> Response:
        return send_file(STATIC / "roombench.html", mimetype="text/html", max_age=0)

    @app.after_request
    def _extend(response: Response) -> Response:
        if request.path == "/stats/requests" and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [{"key": TAB, "data": rows(source())}]
            response.set_data(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))
        elif request.path == "/stats/report" and response.status_code == 200:
            summary = source()
            if summary is not None:
                response.set_data(add_to_html(response.get_data(as_text=True), summary))
        return response


#: secret custom parameters' values from the command line / environment, by option name:
#: never put in the page; an empty field in the form means "keep this one"
SECRETS: dict[str, str] = {}


def _fix_template_args(web_ui: Any) -> None:
    """The form's custom parameters as the page gets them: argparse's '%%' shown as '%',
    and no secret's value (Locust would put the token into the page as the field's default)."""
    original = web_ui.update_template_args

    def update() -> None:
        original()
        for name, opt in (web_ui.template_args.get("extra_options") or {}).items():
            if not isinstance(opt, dict):
                continue
            if isinstance(opt.get("help_text"), str):
                opt["help_text"] = opt["help_text"].replace("%%", "%")
            if opt.get("is_secret") and opt.get("default_value"):
                SECRETS.setdefault(name, opt["default_value"])
                opt["default_value"] = ""

    web_ui.update_template_args = update


def restore_secrets(options: Any) -> None:
    """After the form was posted: an empty secret field keeps the value Locust started with."""
    for name, value in SECRETS.items():
        if getattr(options, name, None) == "":
            setattr(options, name, value)
