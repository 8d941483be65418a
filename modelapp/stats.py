"""Invocation counters: kept in memory per worker, flushed to ``InvocationStat`` off the
request path.

The request path (``record_invocation``, ``StatsCollector.count``) only adds numbers into a dict under a lock. A
background thread, started in each gunicorn worker after the fork (``post_fork`` in
``docker/gunicorn.conf.py``), writes them every ``SMSERVE['STATS_FLUSH_SECONDS']`` with atomic
increments, so several workers (and several instances sharing a PostgreSQL database) add up
exactly; ``worker_exit`` flushes what is left. A database outage is logged and the counts
are kept for the next flush. The same thread records which models the process serves
(``deployments.py``), retrying until the database answers.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    transaction,
)
from django.db.models import F, Value
from django.db.models.functions import Greatest

from modelapp import capture, conf, observers
from modelapp.deployments import deployments
from modelapp.periodic import Periodic, discard_connection

logger = logging.getLogger(__name__)

# Per (model sha256, minute start in epoch seconds):
# [requests, records, errors_4xx, errors_5xx, latency_ms_total, latency_ms_max,
#  bytes_in, bytes_out]
REQUESTS, RECORDS, E4XX, E5XX, LAT_TOTAL, LAT_MAX, BYTES_IN, BYTES_OUT = range(8)
SUMMED = {
    "requests": REQUESTS,
    "records": RECORDS,
    "errors_4xx": E4XX,
    "errors_5xx": E5XX,
    "latency_ms_total": LAT_TOTAL,
    "bytes_in": BYTES_IN,
    "bytes_out": BYTES_OUT,
}
Key = tuple[str | None, int]


class StatsCollector:
    """One per process; ``collector`` below is the one the views use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _buckets; held for microseconds
        self._flush_lock = threading.Lock()  # one flush at a time (thread vs. exit)
        self._buckets: dict[Key, list[float]] = {}
        # The same thread records which models this process serves (deployments.py).
        self._flusher = Periodic("smserve-stats", self.flush, first=deployments.record)

    # --- the request path ---------------------------------------------------------------
    def count(
        self,
        sha256: str | None,
        status: int,
        records: int,
        latency_ms: float,
        bytes_in: int,
        bytes_out: int,
        now: float | None = None,
    ) -> None:
        """Count one invocation; no I/O, no allocation beyond a new minute's bucket."""
        minute = int(time.time() if now is None else now) // 60 * 60
        key = (sha256, minute)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [0, 0, 0, 0, 0.0, 0.0, 0, 0]
            bucket[REQUESTS] += 1
            bucket[RECORDS] += records
            if status >= 500:
                bucket[E5XX] += 1
            elif status >= 400:
                bucket[E4XX] += 1
            bucket[LAT_TOTAL] += latency_ms
            if latency_ms > bucket[LAT_MAX]:
                bucket[LAT_MAX] = latency_ms
            bucket[BYTES_IN] += bytes_in
            bucket[BYTES_OUT] += bytes_out

    def pending(self) -> dict[Key, list[float]]:
        """A copy of the counts not yet written."""
        with self._lock:
            return {key: list(bucket) for key, bucket in self._buckets.items()}

    # --- the background side ------------------------------------------------------------
    def flush(self) -> bool:
        """Write the pending counts in one transaction; on failure keep them and say so."""
        with self._flush_lock:
            if conf.get("METRICS_EMF"):
                emit_emf()  # first: it needs no database
            deployments.record()
            # The drift counts ride on this thread (its database connection handling).
            capture.collector.flush()
            with self._lock:
                taken, self._buckets = self._buckets, {}
            if not taken:
                return True
            try:
                close_old_connections()
                write_buckets(taken)
            except Exception as exc:
                self._merge_back(taken)
                # A database outage is expected and only logged; anything else is a bug
                # and gets its traceback, but still must not kill the thread or the worker.
                requests = sum(int(b[REQUESTS]) for b in taken.values())
                if isinstance(exc, DatabaseError):
                    logger.warning(
                        "Stats not flushed (%s: %s); %d invocation(s) kept for the next "
                        "flush.",
                        type(exc).__name__,
                        exc,
                        requests,
                    )
                else:
                    logger.exception(
                        "Stats not flushed; %d invocation(s) kept for the next flush.",
                        requests,
                    )
                discard_connection()
                return False
            logger.debug("Flushed stats for %d minute(s).", len(taken))
            return True

    def _merge_back(self, taken: dict[Key, list[float]]) -> None:
        with self._lock:
            for key, old in taken.items():
                bucket = self._buckets.get(key)
                if bucket is None:
                    self._buckets[key] = old
                    continue
                for index in SUMMED.values():
                    bucket[index] += old[index]
                bucket[LAT_MAX] = max(bucket[LAT_MAX], old[LAT_MAX])

    def owns_current_thread(self) -> bool:
        """Whether the caller runs in this process's flusher thread."""
        return self._flusher.is_current()

    def start(self) -> None:
        """Start the flusher thread in this process (a gunicorn worker, after the fork)."""
        self._flusher.start(float(conf.get("STATS_FLUSH_SECONDS")))

    def stop(self) -> None:
        """Stop the thread and write what is left (gunicorn's ``worker_exit``)."""
        self._flusher.stop()
        self.flush()
        if conf.get("METRICS_EMF"):
            emit_emf(force=True)
        discard_connection()


def write_buckets(buckets: dict[Key, list[float]]) -> None:
    """Add ``buckets`` to the database with atomic increments: update the row, or create
    it; when another writer created it first, update that one."""
    from modelapp.models import InvocationStat

    with transaction.atomic():
        for (sha256, minute_epoch), bucket in buckets.items():
            minute = datetime.fromtimestamp(minute_epoch, UTC)
            rows = InvocationStat.objects.filter(model_id=sha256, minute=minute)
            increments = {
                name: F(name) + bucket[index] for name, index in SUMMED.items()
            }
            increments["latency_ms_max"] = Greatest(
                F("latency_ms_max"), Value(float(bucket[LAT_MAX]))
            )
            if rows.update(**increments):
                continue
            values = {name: bucket[index] for name, index in SUMMED.items()}
            values["latency_ms_max"] = bucket[LAT_MAX]
            try:
                with transaction.atomic():
                    InvocationStat.objects.create(
                        model_id=sha256, minute=minute, **values
                    )
            except IntegrityError:
                rows.update(**increments)
        if buckets:
            from modelapp.models import TrainedModel

            shas = {sha for sha, _ in buckets if sha}
            TrainedModel.objects.filter(sha256__in=shas).update(
                last_seen=datetime.now(UTC)
            )


collector = StatsCollector()


def emit_emf(force: bool = False) -> None:
    """The CloudWatch EMF lines that are due (``modelapp/emf.py``), written by this same
    thread: one background thread per worker serves both."""
    from modelapp.emf import metrics

    metrics.emit_due(force=force)


def record_invocation(request: Any, response: Any) -> None:
    """Count an /invocations response once it is rendered (its size is known then),
    under the checksum of the model the view served it with; the Prometheus metrics
    (when on) count the same numbers at the same moment."""
    sha256 = getattr(request, "model_sha256", None)
    started = getattr(request, "started", None)
    records = getattr(request, "records", 0)
    bytes_in = int(request.META.get("CONTENT_LENGTH") or 0)
    observed = (
        observers.sink.invocation(request, response)
        if observers.sink is not None
        else None
    )

    def add(rendered: Any) -> None:
        now = time.perf_counter()
        latency_ms = (now - started) * 1000 if started else 0.0
        collector.count(
            sha256,
            rendered.status_code,
            records,
            latency_ms,
            bytes_in,
            len(rendered.content),
        )
        if observed is not None:
            observed(
                rendered.status_code, len(rendered.content), latency_ms / 1000, now
            )

    if hasattr(response, "add_post_render_callback"):
        response.add_post_render_callback(add)
    else:
        add(response)
