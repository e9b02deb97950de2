"""`roombench check --suggest-profile` against the py-foreign server (issue 9)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roombench.check.suggest import suggest, to_toml
from roombench.servers import ServerProcess, start_server
from roombench.wire.profile import DEFAULT_PROFILE, load_profile

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(60)

# what a user knows before: the event names, the path, and the names the server takes
PARTIAL = '''
path = "/live/"
[events]
join = "room:join"
send_message = "msg:send"
new_message = "msg:new"
[fields]
room = "roomId"
channel_id = "roomId"
content = "text"
temp_id = "nonce"
token = "accessToken"
'''


@pytest.fixture(scope="module")
def foreign() -> Iterator[ServerProcess]:
    with start_server("py-foreign", token=REF_TOKEN) as server:
        yield server


def test_suggestion_names_what_came_back(foreign: ServerProcess, tmp_path: Path) -> None:
    partial = tmp_path / "partial.toml"
    partial.write_text(PARTIAL, encoding="utf-8")
    got = suggest(foreign.url, load_profile(partial), REF_TOKEN).profile
    want = load_profile("foreign-example")
    for canonical in ("temp_id", "content", "channel_id", "id", "sender_id", "ts", "ok", "last_id"):
        assert got.field(canonical) == want.field(canonical), canonical
    assert (got.id_order, got.ts_unit, got.ack_mode) == ("opaque", "ms", "callback")
    # the printed profile loads back as the same names
    out = tmp_path / "suggested.toml"
    out.write_text(to_toml(suggest(foreign.url, load_profile(partial), REF_TOKEN)), encoding="utf-8")
    assert load_profile(out).fields == got.fields


def test_cli_prints_a_profile_or_one_line(foreign: ServerProcess, tmp_path: Path) -> None:
    partial = tmp_path / "partial.toml"
    partial.write_text(PARTIAL, encoding="utf-8")
    cli = [sys.executable, "-m", "roombench.cli", "check", foreign.url, "--suggest-profile", "--token", REF_TOKEN]
    ok = subprocess.run(cli + ["--profile", str(partial)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and 'sender_id = "from"' in ok.stdout, ok.stderr
    # the right path, but the contract's event names: nothing comes back to learn from
    names_unknown = tmp_path / "path-only.toml"
    names_unknown.write_text('path = "/live/"\n[fields]\ntoken = "accessToken"\n', encoding="utf-8")
    bad = subprocess.run(cli + ["--timeout", "0.5", "--profile", str(names_unknown)], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert DEFAULT_PROFILE.event("send_message") in bad.stderr
