"""The REST points of the check: backfill pages, ids in the server's order, backfill auth.

A mixin of the check's runner (:class:`roombench.check.points._Check`): it uses the runner's
``profile``, ``token``, ``rest``, ``room`` and ``f`` (a field name of the profile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from roombench.check.client import Failed, Skipped, id_ok, message_problems
from roombench.exceptions import BackfillError, BackfillShapeError
from roombench.wire.profile import Profile
from roombench.chat.backfill import BackfillClient


class BackfillPoints:
    """The backfill half of the contract points."""

    # the runner's (set in _Check.__init__ and its steps)
    profile: Profile
    token: str | None
    rest: BackfillClient
    room: str
    urls: list[str]
    sent: Any
    f: Callable[[str], str]
    left: Callable[..., float]

    def page(self, after: Any, limit: int) -> list[dict[str, Any]]:
        """One backfill page of the room, else FAIL with a hint at the profile's backfill keys."""
        if self.rest is None:
            self.rest = BackfillClient(self.urls[-1], self.profile, self.token)
        self.rest.timeout = max(0.1, self.left())
        try:
            return self.rest.page(self.room, after, limit)
        except BackfillError as exc:
            p = self.profile
            hint = (f" (profile: [backfill] url = {p.backfill_url!r})" if exc.status in (404, 405) else
                    f" (profile: [backfill] key = {p.backfill_key or ''!r}; \"\" means a bare list, "
                    "\"data.items\" a nested one)" if isinstance(exc, BackfillShapeError) else
                    self.auth_hint() if exc.status in (401, 403) else "")
            raise Failed(str(exc) + hint) from None

    def auth_hint(self) -> str:
        """Which profile keys say how the backfill carries the token."""
        if not self.token:
            return " (does the server need --token?)"
        p = self.profile
        return (f" (profile: [backfill] auth = {p.backfill_auth!r}, auth_name = {p.backfill_auth_name!r}, "
                f"auth_value = {p.backfill_auth_value!r})")

    def in_order(self, items: list[dict[str, Any]], what: str) -> list[Any]:
        """The ids of ``items``; FAIL unless they are positive integers in increasing order
        (opaque ids: valid and distinct, the server's order being the order)."""
        raw = [m.get(self.f("id")) for m in items]
        if self.profile.opaque_ids:
            if not all(id_ok(self.profile, i) for i in raw) or len(set(map(repr, raw))) < len(raw):
                raise Failed(f"{what} returned ids {raw}: not distinct strings or numbers")
            return raw
        ids = [i for i in raw if id_ok(self.profile, i)]
        if len(ids) < len(raw) or any(b <= a for a, b in zip(ids, ids[1:])):
            raise Failed(f"{what} returned ids {raw}: not positive integers in increasing order")
        return ids

    def backfill(self) -> str:
        confirmed = [n for n, m in enumerate(self.sent) if m.id is not None]
        if not confirmed:
            raise Skipped("not checked: no message was confirmed")
        start = self.profile.no_id
        items = self.page(start, self.profile.backfill_limit)
        ids = self.in_order(items, f"after={start}")
        by_temp = {m.get(self.f("temp_id")): m for m in items}
        for n in confirmed:
            m = by_temp.get(self.sent[n].temp_id)
            if m is None:
                raise Failed(f"after={start} returned {len(items)} message(s) without {self.sent[n].temp_id!r} (ids {ids})")
            wrong = message_problems(self.profile, m, self.room, self.sent[n])
            if wrong:
                raise Failed(f"backfilled message {self.sent[n].temp_id!r}: {'; '.join(wrong)}")
        if len(confirmed) < 3:
            return f"after={start} returned the {len(confirmed)} messages in id order (too few to check after/limit)"
        # the first three sent: a send step skips once a message was not confirmed, so these are confirmed
        first, *want = [m.id for m in self.sent[:3] if m.id is not None]
        got = self.in_order(self.page(first, 2), f"after={first}&limit=2")
        if got != want:
            raise Failed(f"after={first}&limit=2 returned ids {got}, expected {want}")
        return f"after={start}: all {len(items)} messages in id order, every field; after={first}&limit=2: ids {got}"

    def backfill_auth(self) -> str:
        if not self.token:
            raise Skipped("no --token given: nothing to refuse")
        return self.backfill_auth_refused()

    def backfill_auth_refused(self) -> str:
        """A backfill with a wrong token, placed where the profile's ``[backfill] auth`` says."""
        p = self.profile
        if p.backfill_auth == "none":
            raise Skipped("the profile says the backfill takes no token ([backfill] auth = \"none\")")
        parts = urlsplit(self.urls[0])
        path = p.backfill_url.format(channel_id=quote(self.room, safe=""), after=p.no_id, limit=1, cursor="")
        headers, params = p.backfill_credentials(f"wrong-{self.token}")
        where = f"{p.backfill_auth_name} {p.backfill_auth}"
        try:
            resp = requests.get(f"{parts.scheme}://{parts.netloc}{path}", timeout=max(0.1, self.left()),
                                headers=headers, params=params)
        except requests.RequestException as exc:
            raise Failed(f"backfill request with a wrong token failed: {type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            return f"HTTP {resp.status_code} for a wrong token ({where})"
        hint = (f" (profile: [backfill] url = {p.backfill_url!r})" if resp.status_code == 404 else
                f" (profile: [backfill] auth, auth_name = {p.backfill_auth_name!r}: is that where the server "
                "reads the token?)" if resp.status_code == 200 else "")
        raise Failed(f"HTTP {resp.status_code} for a wrong token ({where}); expected 401 or 403{hint}")

    # -- drop, reconnect, catch up ----------------------------------------------------
