"""``method=explain`` against the ``shap`` package (0.51.0, ``TreeExplainer``): the issue's
RandomForest(100) on ``make_classification(20000, 20)`` (default depth) and a default
HistGradientBoostingClassifier of the same data. In process: our TreeSHAP
(``modelapp/predictors/explain_tree.py``) and shap's, CPU time, 1 and 10 records, medians
of interleaved repeats. Served: the real server (one worker), the worker's CPU time per
``method=explain`` request of 1 record, against shap's in-process time. Prints ratios
(ours / shap's: below 1 is faster) and the build's time and size.

    .venv/bin/python bench/explain.py

Run by hand; not part of the test suite (``shap`` is a test requirement).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")
REPEATS = {1: 15, 10: 5}
SERVED_REQUESTS = 100


def cpu_ms(fn: Any) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) * 1000


def worker_cpu_s(pids: set[int]) -> float:
    """utime + stime of the processes, seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def in_process(name: str, model: Any, X: np.ndarray) -> float:
    """Prints ours/shap's per batch size; returns shap's median for 1 record, ms."""
    import shap

    from modelapp.predictors.explain_tree import TreeShap

    started = time.perf_counter()
    ours = TreeShap(model)
    built = time.perf_counter() - started
    size = sum(
        getattr(ours, a).nbytes
        for a in vars(ours)
        if isinstance(getattr(ours, a), np.ndarray)
    )
    print(
        f"{name}: {ours.n_nodes} nodes, built in {built:.2f} s, "
        f"{size / 2**20:.0f} MB of arrays"
    )
    theirs = shap.TreeExplainer(model)
    shap_one = 0.0
    for records, repeat in REPEATS.items():
        rows = X[:records]
        times: dict[str, list[float]] = {"ours": [], "shap": []}
        for _ in range(repeat):
            times["ours"].append(
                cpu_ms(lambda r=rows: [ours.explain(x, None) for x in r])
            )
            times["shap"].append(cpu_ms(lambda r=rows: theirs.shap_values(r)))
        a, b = median(times["ours"]), median(times["shap"])
        if records == 1:
            shap_one = b
        print(
            f"  in process, {records} record(s): ours {a:.2f} ms, shap {b:.2f} ms, "
            f"ratio {a / b:.2f}"
        )
    return shap_one


def served(name: str, model: Any, X: np.ndarray, shap_one_ms: float) -> None:
    from tests.support.models import write_model
    from tests.support.servers import ServeProcess

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as work:
        base = Path(work) / "ml"
        write_model(base, model)
        server = ServeProcess(base, Path(work), workers=1).start(deadline=300)
        try:
            body = (",".join(map(repr, X[0].tolist())) + "\n").encode()
            pids = server.gunicorn_workers()
            per = {}
            for method in ("predict_proba", "explain"):
                headers = {
                    "Accept": "application/json",
                    "X-Amzn-SageMaker-Custom-Attributes": f"method={method}",
                }
                for _ in range(3):
                    server.invoke(body, "text/csv", **headers)
                before = worker_cpu_s(pids)
                for _ in range(SERVED_REQUESTS):
                    status, _, answer = server.invoke(body, "text/csv", **headers)
                    assert status == 200, answer
                spent = worker_cpu_s(pids) - before
                per[method] = spent / SERVED_REQUESTS * 1000
        finally:
            server.stop()
    explain = per["explain"]
    print(
        f"  served, 1 record: explain {explain:.2f} ms worker CPU per request "
        f"(predict_proba {per['predict_proba']:.2f} ms), shap in process "
        f"{shap_one_ms:.2f} ms, ratio {explain / shap_one_ms:.2f}"
    )


def main() -> None:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from threadpoolctl import threadpool_limits

    X, y = make_classification(20000, 20, random_state=0)
    with threadpool_limits(limits=1):
        forest = RandomForestClassifier(100, random_state=0, n_jobs=2).fit(X, y)
        boosted = HistGradientBoostingClassifier(random_state=0).fit(X, y)
        held_out = make_classification(50, 20, random_state=1)[0]
        for name, model in (("RandomForest(100)", forest), ("HGB", boosted)):
            shap_one = in_process(name, model, held_out)
            served(name, model, held_out, shap_one)


if __name__ == "__main__":
    main()
