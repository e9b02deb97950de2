"""Start the py-foreign server with options the variant's CLI does not take (tests only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCRIPT = """
import sys, uvicorn
from roombench.servers.foreign import create_app
token = sys.argv[2] or None
uvicorn.run(create_app(token=token, profile_path=sys.argv[3], int_ids=sys.argv[4] == "int"),
            host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
            timeout_graceful_shutdown=1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def foreign_server(profile: str | Path, token: str | None = None, int_ids: bool = False) -> Iterator[str]:
    """The foreign server (subprocess on loopback) under ``profile``; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(port), token or "", str(profile),
                             "int" if int_ids else "str"], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            try:
                if opener.open(url + "/healthz", timeout=1).status == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"foreign server did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
