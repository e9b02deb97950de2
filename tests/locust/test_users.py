"""The Locust web UI path: `locust -f locustfiles/chat.py` with a real server on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from roombench.servers import free_port

from tests.helpers import REF_TOKEN

LOCUSTFILE = Path(__file__).parents[2] / "locustfiles" / "chat.py"


@pytest.fixture
def web_ui(ref_server: Any, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "locust.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", ref_server.url,
                             "--web-host", "127.0.0.1", "--web-port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.timeout(60)
def test_web_ui_shows_the_scenario_and_stats(web_ui: str) -> None:
    page = requests.get(web_ui + "/", timeout=5).text
    for option in ("room_size", "drop_every", "transport", "server_profile"):
        assert option in page, option
    form = {"user_count": "4", "spawn_rate": "20", "room_size": "2", "rate": "5", "token": REF_TOKEN,
            "typing_every": "2", "read_every": "2"}
    assert requests.post(web_ui + "/swarm", data=form, timeout=5).json()["success"]
    deadline = time.monotonic() + 20
    names: set[tuple[str, str]] = set()
    while time.monotonic() < deadline and not {("ack", "send_message"), ("fanout", "new_message")} <= names:
        time.sleep(1)
        stats = requests.get(web_ui + "/stats/requests", timeout=5).json()["stats"]
        names = {(s["method"], s["name"]) for s in stats if s["num_requests"]}
    assert {("ack", "send_message"), ("fanout", "new_message"), ("connect", "socket.io")} <= names
    requests.get(web_ui + "/stop", timeout=30)
