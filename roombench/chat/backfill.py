"""The REST backfill client: fetch what a member missed, after the last id it had.

Pages by last id (``after`` = the last id of the previous page), or by the server's cursor
when the profile names one (``[backfill] next``): fetched until the cursor is null or
absent, bounded by :data:`MAX_PAGES` and the caller's deadline.

A page whose request fails for a passing reason (connection refused or reset, HTTP 429 or
502-504: a server restarting, or a pooled keep-alive connection to the process that died)
is asked again after :data:`RETRY_DELAYS`, each retry a counted ``backfill_retry``; only
then does the error stand (and the room's gap stays unfetched, its messages lost).

A hostile server cannot grow the generator or stretch the run: a page is read in chunks
and refused at ``[backfill] max_bytes`` (:class:`BackfillOversize`); items beyond the
``limit`` asked for are a counted protocol error (``backfill_oversize``), not merged, and
end the fetch; every request ends by the caller's deadline and by
:meth:`BackfillClient.end_by` (the generator sets it to the run's end + drain), even
against a server that stalls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import gevent
import orjson
import requests

from roombench.exceptions import BackfillError, BackfillOversize, BackfillShapeError
from roombench.wire.profile import Profile

#: most pages one ``after`` call fetches: a server whose cursor never ends cannot hang us
MAX_PAGES = 1000
#: bytes read per chunk of a page body
CHUNK = 64 * 1024
#: HTTP answers that mean "not now" rather than "never"
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
#: seconds slept before each retry of a page that failed transiently (within the deadline)
RETRY_DELAYS = (0.1, 0.3, 0.9)


def error_kind(exc: BackfillError) -> str:
    """The error counter a failed backfill goes to."""
    return "backfill_oversize" if isinstance(exc, BackfillOversize) else "backfill_error"


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

    def __init__(self, base_url: str, profile: Profile, token: str | None, timeout: float = 10.0,
                 on_error: Callable[[str, str], None] | None = None) -> None:
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
        #: counts a protocol error that does not stop the fetch (kind, detail)
        self.on_error = on_error
        #: no request runs past this (time.monotonic()); see end_by
        self.hard_end = float("inf")

    def end_by(self, deadline: float) -> None:
        """No request runs past ``deadline`` (time.monotonic()), whatever its caller asked."""
        self.hard_end = deadline

    def page(self, channel: str, after: Any, limit: int | None = None) -> list[dict[str, Any]]:
        """One page of messages after ``after``, in the server's order. Raises BackfillError."""
        return self.page_and_cursor(channel, after, limit)[0]

    def page_and_cursor(self, channel: str, after: Any, limit: int | None = None,
                        cursor: Any = "", deadline: float | None = None) -> tuple[list[dict[str, Any]], Any]:
        """One page and the cursor of the next (None: last page, or no cursor paging).

        Every item the server sent, even beyond ``limit`` (``check`` judges that; :meth:`after`
        caps it). Raises BackfillError, BackfillOversize past ``max_bytes``, BackfillError
        when ``deadline`` (or :meth:`end_by`) passes first."""
        limit = limit or self.profile.backfill_limit
        url = self.base + self.profile.backfill_url.format(
            channel_id=quote(channel, safe=""), after=quote(str(after), safe=""), limit=limit,
            cursor=quote(str(cursor), safe=""))
        if self.params:
            url += ("&" if "?" in url else "?") + urlencode(self.params)
        content = self._get(url, min(self.hard_end, deadline if deadline is not None else float("inf")))
        try:
            body = orjson.loads(content)
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

    def _get(self, url: str, deadline: float) -> bytes:
        """The body of a 200 answer, read in chunks up to ``max_bytes`` and by ``deadline``."""
        left = min(self.timeout, deadline - time.monotonic())
        if left <= 0:
            raise BackfillError(f"backfill {url}: no time left before the run's deadline")
        cap = self.profile.backfill_max_bytes
        # requests' timeout is per socket read: a server sending a byte at a time would
        # never trip it, so the whole request also runs under one gevent timeout
        timer = gevent.Timeout(left)
        timer.start()
        try:
            with self.http.get(url, timeout=left, verify=self.verify, stream=True) as resp:
                if resp.status_code != 200:
                    raise BackfillError(f"backfill {url} answered HTTP {resp.status_code}", status=resp.status_code,
                                        transient=resp.status_code in TRANSIENT_STATUSES)
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise BackfillOversize(f"backfill {url} announced {int(declared)} bytes, more than "
                                           f"[backfill] max_bytes = {cap}")
                body = bytearray()
                for chunk in resp.iter_content(CHUNK):
                    body += chunk
                    if len(body) > cap:
                        raise BackfillOversize(f"backfill {url} sent more than [backfill] max_bytes = {cap} bytes")
                return bytes(body)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise BackfillError(f"backfill {url} did not answer within {left:.1f} s (its deadline)") from None
        except requests.RequestException as exc:
            transient = isinstance(exc, requests.ConnectionError)  # refused, reset: not a read timeout
            raise BackfillError(f"backfill request to {url} failed: {exc.__class__.__name__}",
                                transient=transient) from None
        finally:
            timer.close()

    def after(self, channel: str, after: Any, deadline: float) -> list[dict[str, Any]]:
        """Every message after ``after``, paging until the last page or the deadline."""
        id_field = self.profile.field("id")
        limit = self.profile.backfill_limit
        by_cursor = bool(self.profile.backfill_next)
        out: list[dict[str, Any]] = []
        cursor: Any = ""
        deadline = min(deadline, self.hard_end)
        for _ in range(MAX_PAGES):
            if time.monotonic() >= deadline:
                break
            page, nxt = self._page_retrying(channel, after, limit, cursor, deadline)
            if len(page) > limit:
                # a server ignoring limit is broken: the extra items are not merged, and its
                # paging is not followed further (its next page could be as big, and endless)
                if self.on_error is not None:
                    self.on_error("backfill_oversize", f"backfill for {channel!r} returned {len(page)} items "
                                  f"for limit={limit}; the extra ones are dropped")
                out.extend(page[:limit])
                break
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

    def _page_retrying(self, channel: str, after: Any, limit: int, cursor: Any,
                       deadline: float) -> tuple[list[dict[str, Any]], Any]:
        """:meth:`page_and_cursor`, asked again after a transient failure while time is left."""
        for delay in (*RETRY_DELAYS, None):
            try:
                return self.page_and_cursor(channel, after, limit, cursor, deadline)
            except BackfillError as exc:
                if not exc.transient or delay is None or time.monotonic() + delay >= deadline:
                    raise
                if self.on_error is not None:
                    self.on_error("backfill_retry", str(exc))
                gevent.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Release pooled connections."""
        self.http.close()
