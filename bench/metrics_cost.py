"""What the Prometheus metrics add to one invocation, in-process: the calls a worker makes
for an answered invocation (``modelapp.metrics.invocation`` and the function it returns:
the counts written at once, the histograms and byte counts held for the flusher thread,
the in-flight gauge), median CPU time over repeated calls, in prometheus_client's
multiprocess mode; the flusher's writes, once a second, are left out.

    .venv/bin/python bench/metrics_cost.py

``bench/run.py`` measures the server's CPU per request with metrics on and off
(``--server-env SMSERVE_METRICS_PORT=<port>``); on a shared machine its run-to-run spread
is larger than this cost, which this isolates. Run by hand; not part of the test suite.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")


def main() -> int:
    from modelapp import observers

    observers.prepare()
    try:
        import django

        django.setup()
        from modelapp import metrics

        metrics.install()
        request = SimpleNamespace(
            predictor=None,
            prediction_method="predict",
            records=1,
            served_model="model",
            model_sha256="0123456789abcdef" * 4,
            META={"CONTENT_LENGTH": "16"},
            started=time.perf_counter(),
            parsed_at=time.perf_counter(),
            predicted_at=time.perf_counter(),
        )
        response = SimpleNamespace(data=None)

        def one() -> None:
            metrics.started()
            metrics.invocation(request, response)(200, 2, 0.001, time.perf_counter())

        samples = []
        for _ in range(7):
            start = time.process_time()
            for _ in range(20000):
                one()
            samples.append((time.process_time() - start) / 20000 * 1e6)
        print(f"metrics per invocation: {statistics.median(samples):.1f} µs CPU")
    finally:
        observers.disable()
    return 0


if __name__ == "__main__":
    sys.exit(main())
