"""Where the serving code reports what it measures, for the Prometheus metrics.

``sink`` is ``modelapp.metrics`` when ``SMSERVE['METRICS_PORT']`` is set (gunicorn's
master calls ``enable()`` before the app loads, ``docker/gunicorn.conf.py``), else None.
A report site tests ``observers.sink is not None`` and nothing more: with metrics off,
neither ``modelapp.metrics`` nor ``prometheus_client`` is ever imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# prometheus_client's multiprocess mode: every process writes its values to files here.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

sink: Any = None


def enable() -> Any:
    """In gunicorn's master, before anything imports ``prometheus_client``: a new, empty
    directory for every process's values (a stale one would add an earlier run's counts),
    then ``modelapp.metrics`` as the sink."""
    global sink
    if sink is None:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="smserve-metrics-")
        from modelapp import metrics

        sink = metrics
    return sink


def disable() -> None:
    """When gunicorn's master exits: the values' directory goes with it."""
    global sink
    path = os.environ.pop(MULTIPROC_ENV, "")
    if sink is not None and path:
        shutil.rmtree(path, ignore_errors=True)
    sink = None
