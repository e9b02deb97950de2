"""The roombench tab of Locust's web UI, in a real (headless, Debian) Chromium.

Locust runs as a real subprocess against the embedded server; the browser starts the
swarm from the form, opens the roombench tab, and the numbers on the page must equal the
JSON the master serves (and the summary file it wrote).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from roombench.locust.webui import PCTS, fmt, rows
from roombench.servers import free_port

from tests.helpers import REF_TOKEN

LOCUSTFILE = Path(__file__).parents[2] / "locustfiles" / "chat.py"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)

pytestmark = pytest.mark.timeout(90)


def start_locust(host: str, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(tmp_path / "locust.log", "ab")
    env = {**os.environ, "ROOMBENCH_TOKEN": REF_TOKEN}  # never on argv
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host,
                             "--web-host", "127.0.0.1", "--web-port", str(port), "--room-size", "2", "--rate", "5",
                             "--drain", "2", "--drop-every", "1.5", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url + "/", timeout=1)
            return proc, url
        except requests.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
            time.sleep(0.2)


@pytest.fixture
def locust_ui(ref_server: Any, tmp_path: Path) -> Iterator[str]:
    proc, url = start_locust(ref_server.url, tmp_path, "--summary-out", str(tmp_path / "summary.json"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def wait_final(url: str, test: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(url + "/roombench/summary", timeout=5)
        if resp.status_code == 200:
            s = resp.json()
            if s["metadata"]["locust"]["state"] == "final" and s["metadata"]["locust"]["test"] == test:
                return s
        time.sleep(0.3)
    raise AssertionError("no final summary")


def wait_state(url: str, state: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while requests.get(url + "/stats/requests", timeout=5).json()["state"] != state:
        assert time.monotonic() < deadline, f"Locust never reached {state!r}"
        time.sleep(0.3)


def table_rows(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "table tbody tr", "trs => trs.map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: `apt-get install -y chromium` (make test does)")
def test_roombench_tab_shows_the_served_summary(locust_ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(locust_ui + "/")
            page.fill("input[name=userCount]", "4")
            page.fill("input[name=spawnRate]", "20")
            page.click("button:has-text('Start')")
            page.get_by_role("tab", name="roombench").click()
            # live: roombench's own rows show acks while the test runs
            page.wait_for_function("() => Array.from(document.querySelectorAll('table tbody tr'))"
                                   ".some(tr => tr.cells[1] && tr.cells[1].innerText.trim() === 'ack')", timeout=20_000)
            live = {r[1]: r for r in table_rows(page)}
            assert live["test"][2] == "#1 running"
            page.wait_for_timeout(3000)  # a few intervals, some forced drops
            page.click("button:has-text('Stop')")
            summary = wait_final(locust_ui, test=1)
            wait_state(locust_ui, "stopped")
            page.goto(locust_ui + "/?tab=roombench")  # the UI polls only while running: load the final rows
            page.wait_for_function("() => Array.from(document.querySelectorAll('table tbody tr'))"
                                   ".some(tr => tr.cells[2] && tr.cells[2].innerText.trim() === '#1 final')",
                                   timeout=10_000)
            shown = table_rows(page)
            page.screenshot(path=str(tmp_path / "roombench-tab.png"), full_page=True)
            page.goto(locust_ui + "/roombench/")
            page.wait_for_selector("#latency tr:nth-child(2)")
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "roombench-page.png"), full_page=True)
            own_page = page.eval_on_selector_all(
                "#latency tr", "trs => trs.map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))")
        finally:
            browser.close()

    # the page shows exactly the served JSON, row for row
    assert shown == [[r[k["key"]] for k in STRUCTURE_KEYS] for r in rows(summary)]
    by_name = {r[1]: r for r in shown}
    ack = summary["latency_ms"]["ack"]
    assert ack["count"] > 0
    assert by_name["ack"][2:] == [str(ack["count"]), *(fmt(ack[k]) for k in PCTS)]
    for key in ("sent", "acked", "expected", "delivered_live", "recovered", "forced_drops"):
        assert by_name[key][2] == str(summary["delivery"][key]), key
    assert summary["delivery"]["forced_drops"] > 0
    assert by_name["all cpu_pct"][2] == fmt(summary["metadata"]["generator"]["cpu_pct"])
    assert [row for row in own_page[1:] if row[0] == "ack"] == [["ack", str(ack["count"]), *(fmt(ack[k]) for k in PCTS)]]
    # ... and the file the master wrote is that JSON
    assert orjson.loads((tmp_path / "summary.json").read_bytes()) == summary
    assert (tmp_path / "roombench-tab.png").stat().st_size > 10_000


STRUCTURE_KEYS = [{"key": k} for k in ("section", "item", "value", *PCTS)]


def summary_now(url: str) -> dict[str, Any]:
    resp = requests.get(url + "/roombench/summary", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_for(url: str, pred: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(url + "/roombench/summary", timeout=5)
        if resp.status_code == 200 and pred(resp.json()):
            return resp.json()
        assert time.monotonic() < deadline, resp.text[:300]
        time.sleep(0.3)


def ack_row(url: str) -> dict[str, Any]:
    stats = requests.get(url + "/stats/requests", timeout=5).json()["stats"]
    return next(s for s in stats if (s["method"], s["name"]) == ("ack", "send_message"))


def test_page_keeps_the_token_out_and_shows_help_unescaped(locust_ui: str) -> None:
    page = requests.get(locust_ui + "/", timeout=5).text
    assert f"\"{REF_TOKEN}\"" not in page  # Locust would make it the password field's default value
    assert "+-50% jitter" in page and "%%" not in page
    assert requests.get(locust_ui + "/roombench/summary", timeout=5).status_code == 404  # no test yet
    # an empty token field means "the one Locust started with": users connect
    form = {"user_count": "2", "spawn_rate": "20", "token": ""}
    assert requests.post(locust_ui + "/swarm", data=form, timeout=5).json()["success"]
    s = wait_for(locust_ui, lambda s: s["delivery"]["acked"] > 0)
    assert not s["errors"].get("connect_failed")
    requests.post(locust_ui + "/stop", timeout=30)


def test_reset_restarts_roombench_with_locust_rows(locust_ui: str) -> None:
    assert requests.post(locust_ui + "/swarm", data={"user_count": "4", "spawn_rate": "20"}, timeout=5).json()["success"]
    before = wait_for(locust_ui, lambda s: s["latency_ms"]["ack"]["count"] >= 30)
    assert requests.post(locust_ui + "/stats/reset", timeout=5).ok
    time.sleep(1.2)  # past the summary's 1 s cache
    after = summary_now(locust_ui)
    # both restart from (nearly) zero together: ~20 acks/s here, so < 30 within ~1 s
    assert after["latency_ms"]["ack"]["count"] < 30 <= before["latency_ms"]["ack"]["count"]
    assert after["delivery"]["sent"] < before["delivery"]["sent"]
    assert ack_row(locust_ui)["num_requests"] < 30
    requests.post(locust_ui + "/stop", timeout=30)
    final = wait_final(locust_ui, test=1)
    # the final summary counts from the reset too: it agrees with Locust's row (which may
    # hold the at most ~1 s of pre-reset samples the bridge had not flushed yet)
    assert abs(final["latency_ms"]["ack"]["count"] - ack_row(locust_ui)["num_requests"]) <= 25


def test_each_test_gets_its_own_file_and_mid_run_edits_are_refused(locust_ui: str, tmp_path: Path) -> None:
    form = {"user_count": "2", "spawn_rate": "20", "rate": "5"}
    assert requests.post(locust_ui + "/swarm", data=form, timeout=5).json()["success"]
    wait_for(locust_ui, lambda s: s["delivery"]["acked"] > 0)
    # the Edit dialog posts the form again while running, with a new rate
    assert requests.post(locust_ui + "/swarm", data={**form, "rate": "1"}, timeout=5).json()["success"]
    time.sleep(1.2)
    notices = summary_now(locust_ui)["metadata"]["locust"]["notices"]
    assert any("NOT applied" in n and "rate 5.0 -> 1.0" in n for n in notices), notices
    requests.post(locust_ui + "/stop", timeout=30)
    first = wait_final(locust_ui, test=1)
    assert first["metadata"]["scenario"]["rate"] == 5.0  # the run's own scenario, not the edited one
    assert any("NOT applied" in r["value"] for r in rows(first) if r["section"] == "notice")
    wait_state(locust_ui, "stopped")
    # the next test starts with the edited rate and writes its own file
    assert requests.post(locust_ui + "/swarm", data={**form, "rate": "1"}, timeout=5).json()["success"]
    wait_for(locust_ui, lambda s: s["metadata"]["locust"]["test"] == 2 and s["delivery"]["acked"] > 0)
    requests.post(locust_ui + "/stop", timeout=30)
    second = wait_final(locust_ui, test=2)
    assert second["metadata"]["scenario"]["rate"] == 1.0 and not second["metadata"]["locust"]["notices"]
    assert orjson.loads((tmp_path / "summary.json").read_bytes()) == first
    assert orjson.loads((tmp_path / "test-2" / "summary.json").read_bytes()) == second
    assert (tmp_path / "ack.hlog").exists() and (tmp_path / "test-2" / "ack.hlog").exists()  # each beside its own
    download = requests.get(locust_ui + "/roombench/summary.json", timeout=5)
    assert "attachment" in download.headers["Content-Disposition"] and download.json() == second


def synthetic_summary(lag_ms: float, lost: int) -> dict[str, Any]:
    import numpy as np

    from roombench.chat.ledger import LedgerCounts
    from roombench.measure.metrics import Metrics, add_values, new_histogram, to_micros
    from roombench.measure.report import ProcessReport
    from roombench.measure.summary import build_summary

    metrics = Metrics()
    for ms in (1.0, 2.0, 3.0, 250.0):
        metrics.record("ack", ms / 1000)
    lag = new_histogram()
    add_values(lag, to_micros(np.full(100, lag_ms / 1000)))
    report = ProcessReport(target="http://x", scenario={}, profile={}, metrics=metrics, loop_lag=lag,
                           ledger=LedgerCounts(sent=4, acked=4, expected=4, delivered_live=4 - lost, live_missed=lost,
                                               lost=lost), wall_s=10.0, cpu_s=1.0)
    return build_summary(report, target="http://x", scenario={})


def test_saturation_and_losses_are_flagged_on_every_page() -> None:
    from roombench.locust.webui import add_to_html, csv_text

    bad, good = synthetic_summary(lag_ms=280, lost=3), synthetic_summary(lag_ms=1, lost=0)
    by_item = {r["item"]: r for r in rows(bad)}
    assert "SATURATED" in by_item["\u26a0 SATURATED"]["item"] and "280" in by_item["\u26a0 SATURATED"]["value"]
    assert by_item["lost \u26a0"]["value"] == "3" and "duplicates" in by_item  # zero: not flagged
    assert by_item["ack"]["p99"] == fmt(bad["latency_ms"]["ack"]["p99"]) and by_item["ack"]["value"] == "4"
    assert not any("SATURATED" in r["item"] or "\u26a0" in r["item"] for r in rows(good))
    report = add_to_html("<html><body><p>locust</p></body></html>", bad)
    assert report.index("<p>locust</p>") < report.index("generator saturated") < report.index("</body>")
    assert '<tr style="color:#c00;font-weight:bold"><td>lost</td><td>3</td></tr>' in report
    assert "delivery,lost,3" in csv_text(bad) and "generator,saturated,True" in csv_text(bad)
