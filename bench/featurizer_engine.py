"""A featurizer's ``transform`` in process: scikit-learn against the compiled engine, as
the predictor calls them (``SklearnPredictor.call``), 1 and 1,000 records, one thread,
CPU time, medians of interleaved repeats. The model is what ``train`` fits for
``["standard_scaler", "pca"]`` on a 4-column table.

    .venv/bin/python bench/featurizer_engine.py

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
REPEATS = {1: 2000, 1000: 200}


def cpu_ms(fn: Any, X: np.ndarray) -> float:
    started = time.process_time()
    fn("transform", X)
    return (time.process_time() - started) * 1000


def main() -> None:
    import django

    django.setup()
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from modelapp.predictors import SklearnPredictor

    data = np.random.default_rng(0).normal(5.0, 2.0, (2000, 4))
    predictor = SklearnPredictor(make_pipeline(StandardScaler(), PCA(2)).fit(data))
    predictor.compile(None)
    assert predictor.engine_report.methods == {"transform": "onnxruntime"}
    print(f"{'records':>7} {'sklearn ms':>10} {'onnx ms':>8} {'ratio':>6}")
    with threadpool_limits(limits=1):
        for records, repeats in REPEATS.items():
            batch = np.ascontiguousarray(data[:records])
            timings: dict[str, list[float]] = {"sklearn": [], "onnx": []}
            for _ in range(repeats):  # interleaved: both see the same noise
                timings["sklearn"].append(cpu_ms(predictor._sklearn_call, batch))
                timings["onnx"].append(cpu_ms(predictor.call, batch))
            a, b = median(timings["sklearn"]), median(timings["onnx"])
            print(f"{records:>7} {a:>10.3f} {b:>8.3f} {b / a:>5.2f}x")


if __name__ == "__main__":
    main()
