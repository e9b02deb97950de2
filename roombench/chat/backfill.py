"""The REST backfill client: fetch what a member missed, after the last id it had."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import requests

from roombench.exceptions import BackfillError, BackfillShapeError
from roombench.wire.profile import Profile


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
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def page(self, channel: str, after: int, limit: int | None = None) -> list[dict[str, Any]]:
        """One page of messages with id > ``after``, in id order. Raises BackfillError."""
        limit = limit or self.profile.backfill_limit
        url = self.base + self.profile.backfill_url.format(channel_id=quote(channel, safe=""), after=after, limit=limit)
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
        items = body.get(key) if key and isinstance(body, dict) else body
        if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
            raise BackfillShapeError(f"backfill {url} returned {type(body).__name__}, expected a list of messages")
        return items

    def after(self, channel: str, after: int, deadline: float) -> list[dict[str, Any]]:
        """Every message with id > ``after``, paging until a short page or the deadline."""
        id_field = self.profile.field("id")
        limit = self.profile.backfill_limit
        out: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            page = self.page(channel, after, limit)
            out.extend(page)
            if len(page) < limit:
                break
            last = page[-1].get(id_field)
            if not isinstance(last, int) or last <= after:
                raise BackfillError(f"backfill for {channel!r} did not advance past id {after}")
            after = last
        return out

    def close(self) -> None:
        """Release pooled connections."""
        self.http.close()
