"""The REST backfill client: fetch what a member missed, after the last id it had.

Pages by last id (``after`` = the last id of the previous page), or by the server's cursor
when the profile names one (``[backfill] next``): fetched until the cursor is null or
absent, bounded by :data:`MAX_PAGES` and the caller's deadline.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
import requests

from roombench.exceptions import BackfillError, BackfillShapeError
from roombench.wire.profile import Profile

#: most pages one ``after`` call fetches: a server whose cursor never ends cannot hang us
MAX_PAGES = 1000


def dotted(body: Any, path: str) -> Any:
    """The value at a dotted ``path`` ("data.items") in a JSON body; None where it is absent."""
    for key in path.split("."):
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


class BackfillClient:
    """Fetches ``GET <backfill_url>`` pages for one server; one per generator process.

    Under gevent, ``requests`` is cooperative; a Session keeps connections alive.
    """

    def __init__(self, base_url: str, profile: Profile, token: str | None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.profile = profile
        self.timeout = timeout
        self.http = requests.Session()
        # one trust store for the WebSocket and REST: the handshake's ssl context reads
        # SSL_CERT_FILE; requests would read REQUESTS_CA_BUNDLE and let it override a
        # session's setting, so it is passed with every request
        self.verify: str | bool = os.environ.get("SSL_CERT_FILE") or True
        headers, self.params = profile.backfill_credentials(token)
        self.http.headers.update(headers)

    def page(self, channel: str, after: Any, limit: int | None = None) -> list[dict[str, Any]]:
        """One page of messages after ``after``, in the server's order. Raises BackfillError."""
        return self.page_and_cursor(channel, after, limit)[0]

    def page_and_cursor(self, channel: str, after: Any, limit: int | None = None,
                        cursor: Any = "") -> tuple[list[dict[str, Any]], Any]:
        """One page and the cursor of the next (None: last page, or no cursor paging)."""
        limit = limit or self.profile.backfill_limit
        url = self.base + self.profile.backfill_url.format(
            channel_id=quote(channel, safe=""), after=quote(str(after), safe=""), limit=limit,
            cursor=quote(str(cursor), safe=""))
        if self.params:
            url += ("&" if "?" in url else "?") + urlencode(self.params)
        try:
            resp = self.http.get(url, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise BackfillError(f"backfill request to {url} failed: {exc.__class__.__name__}") from None
        if resp.status_code != 200:
            raise BackfillError(f"backfill {url} answered HTTP {resp.status_code}", status=resp.status_code)
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise BackfillError(f"backfill {url} returned malformed JSON") from None
        key = self.profile.backfill_key
        items = dotted(body, key) if key else body
        if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
            where = f" at {key!r}" if key else ""
            raise BackfillShapeError(f"backfill {url} returned {type(body).__name__}{where}, expected a list of messages "
                                "(profile key [backfill] key)")
        nxt = dotted(body, self.profile.backfill_next) if self.profile.backfill_next else None
        return items, nxt

    def after(self, channel: str, after: Any, deadline: float) -> list[dict[str, Any]]:
        """Every message after ``after``, paging until the last page or the deadline."""
        id_field = self.profile.field("id")
        limit = self.profile.backfill_limit
        by_cursor = bool(self.profile.backfill_next)
        out: list[dict[str, Any]] = []
        cursor: Any = ""
        for _ in range(MAX_PAGES):
            if time.monotonic() >= deadline:
                break
            page, nxt = self.page_and_cursor(channel, after, limit, cursor)
            out.extend(page)
            if by_cursor:
                if nxt is None or nxt == "" or not page:
                    break
                if nxt == cursor:
                    raise BackfillError(f"backfill for {channel!r} returned the same cursor {nxt!r} twice")
                cursor = nxt
                continue
            if len(page) < limit:
                break
            last = page[-1].get(id_field)
            if not self.profile.is_id(last) or last == after or (not self.profile.opaque_ids and last <= after):
                raise BackfillError(f"backfill for {channel!r} did not advance past id {after}")
            after = last
        return out

    def close(self) -> None:
        """Release pooled connections."""
        self.http.close()
