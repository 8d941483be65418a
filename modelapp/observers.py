"""Where the serving code reports what it measures, for the Prometheus metrics.

``sink`` is ``modelapp.metrics`` once installed (gunicorn's master does it before the app
loads when ``SMSERVE['METRICS_PORT']`` is set, ``docker/gunicorn.conf.py``), else None. A
report site tests ``observers.sink is not None`` and nothing more: with metrics off,
neither ``modelapp.metrics`` nor ``prometheus_client`` is ever imported. This module
imports nothing of the project, so that any module may report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# prometheus_client's multiprocess mode: every process writes its values to files here.
# prometheus_client reads it once, when imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

sink: Any = None


def prepare() -> None:
    """In gunicorn's master, before ``modelapp.metrics`` (and ``prometheus_client``) is
    imported: a new, empty directory for every process's values (a stale one would add
    an earlier run's counts), inherited by the workers through the environment."""
    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="smserve-metrics-")


def disable() -> None:
    """When gunicorn's master exits: no more reports, and the directory goes."""
    global sink
    path = os.environ.pop(MULTIPROC_ENV, "")
    if sink is not None and path:
        shutil.rmtree(path, ignore_errors=True)
    sink = None
