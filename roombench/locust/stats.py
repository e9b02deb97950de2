"""The Locust stats bridge: roombench's metrics as rows of Locust's own table.

It writes ``StatsEntry`` fields the way ``StatsEntry.log`` would (one call per batch, not
per sample): those fields are Locust's internals, so pyproject.toml pins the Locust range
this is tested with; a Locust outside it must be tested here before the pin moves.

Locust's stats table shows every metric as ``Type / Name`` (:data:`STAT_NAMES`):

========== =============== ===================================================
Type       Name            what
========== =============== ===================================================
ack        send_message    send -> confirmation (failures: ack timeouts/errors)
fanout     new_message     send -> each other member has it (one row, aggregated)
connect    socket.io       first connect
reconnect  socket.io       drop -> connected again
recover    socket.io       drop -> reconnected with the session recovered (--recovery csr|auto)
rejoin     join            connected -> every room re-joined
backfill   fetch / merge   REST fetch of what was missed / merge
backfill   total           drop -> whole again (rejoined, fetched, merged)
typing     user_typing     typing -> each other member told
read       message_read    mark_read -> each other member told
========== =============== ===================================================
"""

from __future__ import annotations

import time
from typing import Any

from roombench.measure.metrics import LocustAggregate, Metrics

STAT_NAMES: dict[str, tuple[str, str]] = {
    "ack": ("ack", "send_message"),
    "fanout": ("fanout", "new_message"),
    "connect": ("connect", "socket.io"),
    "reconnect": ("reconnect", "socket.io"),
    "recover": ("recover", "socket.io"),
    "rejoin": ("rejoin", "join"),
    "fetch": ("backfill", "fetch"),
    "merge": ("backfill", "merge"),
    "backfill": ("backfill", "total"),
    "typing": ("typing", "user_typing"),
    "read_receipt": ("read", "message_read"),
}

class LocustBridge:
    """Feeds aggregated metrics into Locust's stats table, once per :meth:`flush`.

    ``names`` maps a metric to the (request_type, name) row it appears as. The effect on
    each ``StatsEntry`` (and on ``stats.total``) is what ``StatsEntry.log`` called once per
    sample would do, apart from float summation order. Samples recorded before the bridge
    was created are not shown. Call :meth:`flush` about once a second from a greenlet.

    ``in_total`` names the metrics that also go into Locust's "Aggregated" row (and so its
    charts); None: all of them. Unlike metrics (acks, deliveries, reconnects) summed into
    one row make a percentile of nothing, so the users pass only ``{"ack"}``.
    """

    def __init__(self, env: Any, metrics: Metrics, names: dict[str, tuple[str, str]],
                 in_total: set[str] | None = None) -> None:
        import locust.stats  # lazy: importing locust monkey-patches; summary tools never need it

        self.env = env
        self.metrics = metrics
        self.names = dict(names)
        self.in_total = set(names) if in_total is None else set(in_total)
        fn = locust.stats.bucket_response_time
        is_default = getattr(fn, "__module__", None) == "locust.stats" and fn.__name__ == "bucket_response_time"
        metrics.track_locust(self.names, None if is_default else fn)

    def flush(self) -> None:
        """Log everything recorded since the last flush into ``env.stats``."""
        aggregates = self.metrics.drain_aggregates()
        if not aggregates:
            return
        stats = self.env.stats
        now = time.time()
        for metric, agg in aggregates.items():
            request_type, name = self.names[metric]
            _log_aggregate(stats.get(name, request_type), agg, now)
            if metric in self.in_total:
                _log_aggregate(stats.total, agg, now)


def _touch(entry: Any, n: int, now: float) -> None:
    """StatsEntry.log's bookkeeping for ``n`` requests at ``now`` (cache, counts, timestamps)."""
    t = int(now)
    if entry.use_response_times_cache and entry.last_request_timestamp and t > int(entry.last_request_timestamp):
        entry._cache_response_times(t - 1)
    entry.num_requests += n
    entry.num_reqs_per_sec[t] += n
    entry.last_request_timestamp = now


def _log_aggregate(entry: Any, agg: LocustAggregate, now: float) -> None:
    """StatsEntry.log + _log_response_time for a whole aggregate (response times in ms)."""
    _touch(entry, agg.n, now)
    entry.total_response_time += agg.sum_us / 1000
    min_ms, max_ms = agg.min_us / 1000, agg.max_us / 1000
    entry.min_response_time = min_ms if entry.min_response_time is None else min(entry.min_response_time, min_ms)
    entry.max_response_time = max(entry.max_response_time, max_ms)
    rt = entry.response_times
    for key, count in agg.buckets.items():
        rt[key] += count


def log_failures(env: Any, request_type: str, name: str, n: int, error: Exception | str | None,
                 count_requests: bool = True) -> None:
    """Log ``n`` failures (e.g. ack timeouts) into ``env.stats`` in one go.

    Equivalent to ``n`` times ``events.request.fire(..., response_time=None,
    exception=error)``: each failure also counts as a request without a response time
    (``num_none_requests``), so Locust's failure ratio stays failures / attempts. With
    ``count_requests=False`` only the ``StatsEntry.log_error`` part is mirrored.
    """
    if n <= 0:
        return
    from locust.stats import StatsError

    stats = env.stats
    now = time.time()
    t = int(now)
    for entry in (stats.get(name, request_type), stats.total):
        if count_requests:
            _touch(entry, n, now)
            entry.num_none_requests += n
        entry.num_failures += n
        entry.num_fail_per_sec[t] += n
    key = StatsError.create_key(request_type, name, error)
    err = stats.errors.get(key)
    if err is None:
        err = stats.errors[key] = StatsError(request_type, name, error)
    err.occurred()
    err.occurrences += n - 1
