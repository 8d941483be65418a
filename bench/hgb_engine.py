"""HistGradientBoosting in process: scikit-learn against ONNX Runtime running our
converter's graph (``modelapp/predictors/hgb_onnx.py``), 1 and 1,000 records, one thread
each (as in a served worker), CPU time, medians of interleaved repeats.

    .venv/bin/python bench/hgb_engine.py

Run by hand; not part of the test suite.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")
REPEATS = {1: 400, 1000: 40}


def cpu_ms(fn: Any, X: np.ndarray) -> float:
    started = time.process_time()
    fn(X)
    return (time.process_time() - started) * 1000


def main() -> None:
    import onnxruntime
    from sklearn.datasets import make_classification, make_regression
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from threadpoolctl import threadpool_limits

    from modelapp.predictors.compiled import convert

    rng = np.random.default_rng(0)
    X, y = make_classification(20000, 20, n_informative=10, random_state=0)
    X[rng.random(X.shape) < 0.05] = np.nan
    Xr, yr = make_regression(20000, 20, random_state=0)
    cases = {
        "classifier (binary), predict_proba": (
            HistGradientBoostingClassifier(random_state=0).fit(X, y),
            "predict_proba",
            X,
        ),
        "classifier (4 classes), predict": (
            HistGradientBoostingClassifier(random_state=0).fit(
                X, y % 2 + 2 * (X[:, 0] > 0)
            ),
            "predict",
            X,
        ),
        "regressor, predict": (
            HistGradientBoostingRegressor(random_state=0).fit(Xr, yr),
            "predict",
            Xr,
        ),
    }
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    print(f"{'case':40} {'records':>7} {'sklearn ms':>10} {'onnx ms':>8} {'ratio':>6}")
    with threadpool_limits(limits=1):
        for name, (model, method, data) in cases.items():
            session = onnxruntime.InferenceSession(
                convert(model, data.shape[1]),
                options,
                providers=["CPUExecutionProvider"],
            )
            output = 1 if method == "predict_proba" else 0
            theirs = getattr(model, method)

            def ours(
                batch: np.ndarray, session: Any = session, output: int = output
            ) -> Any:
                return session.run(None, {"X": batch})[output]

            for records, repeats in REPEATS.items():
                batch = np.ascontiguousarray(data[:records], dtype=np.float64)
                timings: dict[str, list[float]] = {"sklearn": [], "onnx": []}
                for _ in range(repeats):  # interleaved: both see the same noise
                    timings["sklearn"].append(cpu_ms(theirs, batch))
                    timings["onnx"].append(cpu_ms(ours, batch))
                a, b = median(timings["sklearn"]), median(timings["onnx"])
                print(f"{name:40} {records:>7} {a:>10.3f} {b:>8.3f} {b / a:>5.2f}x")


if __name__ == "__main__":
    main()
