"""Locust's own SocketIOUser (locust.contrib.socketio) running the benchmark's scenario.

A minimal locustfile as its documentation suggests: every user connects over the
websocket transport with the token, joins a room of its own and then, in a task with no
wait, calls ``send_message`` and waits for its ack (``sio.call``, timed by Locust as
``WSC send_message``). The server's echo of each message to the room arrives as
``new_message`` and is counted by SocketIOUser's default handler (``WSR``).
BENCH_MODE=idle: connect and join only. Marks: see marks.py.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import gevent
from locust import constant, events, task
from locust.contrib.socketio import SocketIOUser
from locust.env import Environment
from locust.runners import MasterRunner

from bench.generators import marks

TOKEN = os.environ.get("BENCH_TOKEN", "")
IDLE = os.environ.get("BENCH_MODE", "ack") == "idle"
CONTENT = "x" * int(os.environ.get("BENCH_SIZE", "64"))
_numbers = itertools.count()
_ready = [0]


class ChatSocketIOUser(SocketIOUser):
    """One session: connect, join an own room, then send_message and wait for its ack, forever."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.room = f"sio-{os.getpid()}-{next(_numbers)}"
        self.k = 0
        self.sio.connect(self.host, auth={"token": TOKEN, "user_id": self.room}, transports=["websocket"],
                         wait_timeout=10)
        self.sio.call("join", {"room": self.room}, timeout=10)
        _ready[0] += 1

    @task
    def send(self) -> None:
        if IDLE:
            gevent.sleep(3600)
            return
        self.k += 1
        data = {"channel_id": self.room, "content": CONTENT, "temp_id": f"{self.room}-{self.k}"}
        self.sio.call("send_message", data, timeout=10)

    def on_stop(self) -> None:
        self.sio.disconnect()


@events.test_start.add_listener
def _start_marks(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return

    def end() -> dict[str, Any]:
        entry = environment.stats.get("send_message", "WSC")
        n = entry.num_requests
        p50 = entry.get_response_time_percentile(0.5) if n else 0
        p99 = entry.get_response_time_percentile(0.99) if n else 0
        echoes = environment.stats.get("new_message", "WSR").num_requests
        return {"acks": n, "deliveries": 0, "echoes": echoes, "errors": {"failures": entry.num_failures},
                "lat": {"ack": {"n": n, "p50_ms": p50, "p99_ms": p99}}}

    gevent.spawn(marks.drive, lambda: _ready[0], environment.stats.reset_all, end)
