"""CloudWatch Embedded Metric Format (EMF) lines: each worker's counts and latency per
model, every ``SMSERVE['METRICS_EMF_SECONDS']`` (``SMSERVE_METRICS_EMF=true``).

A SageMaker endpoint sends the container's stdout and stderr to CloudWatch Logs, which
turns every line carrying an ``_aws`` member into metrics: no scraper, no agent, no AWS
call from the container. The format (AWS's "Specification: Embedded metric format"):
one JSON object per line, ``_aws.Timestamp`` in epoch milliseconds, one metric directive
naming the namespace, the dimension set and each metric with its unit, and each metric's
value (a number, or an array of at most 100) as a top-level member beside the dimensions'.

Why the stats flusher and not a thread of its own: every worker already runs one
(``modelapp/stats.py``), started after the fork, waking every ``STATS_FLUSH_SECONDS`` and
flushing once more when the worker exits; ``emit_due`` rides on it. The counts here are
kept apart from the database's buckets: a database outage (whose counts are retried)
neither delays nor doubles them. The request path only adds to a dict under a lock.

Each worker writes its own lines; CloudWatch adds them up (the ``Sum`` statistic of the
counters). ``Latency`` holds every duration of the window up to 100, beyond that a
uniform sample of 100 (reservoir sampling), so CloudWatch's percentiles of it are exact
for quiet windows and estimates for busy ones; ``LatencyMax`` is exact.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelapp import conf
from smserve.logs import FIELDS

logger = logging.getLogger("modelapp.emf")

NAMESPACE = "smserve"
DIMENSIONS = ["Model", "ModelSha256"]
# EMF's limit of values in one metric's array.
SAMPLES = 100
# (name, unit) of each metric, in the order of the line.
METRICS = (
    ("Invocations", "Count"),
    ("Records", "Count"),
    ("Errors4xx", "Count"),
    ("Errors5xx", "Count"),
    ("BytesIn", "Bytes"),
    ("BytesOut", "Bytes"),
    ("Latency", "Milliseconds"),
    ("LatencyMax", "Milliseconds"),
)


@dataclass
class Window:
    """One model's counts over one window."""

    invocations: int = 0
    records: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latency_max: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, fields: dict[str, Any]) -> None:
        self.invocations += 1
        self.records += fields["records"]
        status = fields["status"]
        self.errors_5xx += status >= 500
        self.errors_4xx += 400 <= status < 500
        self.bytes_in += fields["bytes_in"]
        self.bytes_out += fields["bytes_out"]
        latency = fields["duration_ms"]
        self.latency_max = max(self.latency_max, latency)
        if len(self.latencies) < SAMPLES:
            self.latencies.append(latency)
        else:
            slot = random.randrange(self.invocations)
            if slot < SAMPLES:
                self.latencies[slot] = latency

    def values(self) -> dict[str, Any]:
        return {
            "Invocations": self.invocations,
            "Records": self.records,
            "Errors4xx": self.errors_4xx,
            "Errors5xx": self.errors_5xx,
            "BytesIn": self.bytes_in,
            "BytesOut": self.bytes_out,
            "Latency": self.latencies,
            "LatencyMax": self.latency_max,
        }


def document(model: str, sha256: str, window: Window, start: float) -> dict[str, Any]:
    """The EMF members of one model's line (the log line adds timestamp, level, ...)."""
    return {
        "_aws": {
            "Timestamp": int(start * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [DIMENSIONS],
                    "Metrics": [
                        {"Name": name, "Unit": unit, "StorageResolution": 60}
                        for name, unit in METRICS
                    ],
                }
            ],
        },
        # A dimension's value must not be empty: a model not loaded is "-".
        "Model": model or "-",
        "ModelSha256": sha256 or "-",
        **window.values(),
    }


class EMFMetrics:
    """One per process; ``metrics`` below is the one ``invocation_log`` counts into."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], Window] = {}
        self._window_start: float | None = None

    def count(self, fields: dict[str, Any]) -> None:
        """Count one invocation (its line's fields, ``invocation_log``); no I/O."""
        key = (fields["model"], fields["model_sha256"])
        with self._lock:
            if self._window_start is None:
                self._window_start = self._start_of(time.time())
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = Window()
            window.add(fields)

    def emit_due(self, now: float | None = None, force: bool = False) -> int:
        """Write one line per model once the window has ended (or now, with ``force``:
        the worker is exiting); how many were written."""
        now = time.time() if now is None else now
        with self._lock:
            start = self._window_start
            if start is None or not (force or self._start_of(now) > start):
                return 0
            windows, self._windows = self._windows, {}
            self._window_start = None
        for (model, sha256), window in windows.items():
            logger.info(
                "Metrics of model %s over %g s.",
                model or "-",
                float(conf.get("METRICS_EMF_SECONDS")),
                extra={FIELDS: document(model, sha256, window, start)},
            )
        return len(windows)

    @staticmethod
    def _start_of(moment: float) -> float:
        """The start of the window ``moment`` falls in: windows are aligned to the clock
        (whole minutes at the default), the same in every worker."""
        seconds = float(conf.get("METRICS_EMF_SECONDS"))
        return moment // seconds * seconds


metrics = EMFMetrics()
