"""The cost of text columns, in process: parse + predict of a request to a 4-column mixed
model (2 numbers, 2 categories, as ``train`` builds it) against the same model fed a
ready DataFrame, for 1 and 1,000 records, CSV and JSON objects.

    .venv/bin/python bench/tables.py

Each figure is the lowest CPU time of repeated calls (on a shared machine the lowest is
the least noisy), OpenMP/BLAS capped to one thread as in a worker, the three measured in
alternation. "ours" is the parse plus the schema's DataFrame, the part smserve adds; the
request's cost is ours + the model's predict on that frame. Run by hand; not part of the
test suite.
"""

from __future__ import annotations

import gc
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

import django  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLUMNS = ["age", "plan", "spend", "country"]


def table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "plan": rng.choice(["basic", "pro", "enterprise"], rows).astype(object),
            "spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "country": rng.choice(["DE", "FR", "US", "GB", "ES"], rows).astype(object),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "spend"] = np.nan
    y = np.where(
        (frame["plan"] == "basic") & (frame["age"] < 40) | (frame["country"] == "US"),
        "yes",
        "no",
    )
    return frame, y


def cpu_ms(call, repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return min(times) * 1000


def main() -> None:
    django.setup()
    from threadpoolctl import threadpool_limits

    from modelapp.metadata import Feature
    from modelapp.parsers import CSVParser, JSONParser
    from modelapp.predictors import SklearnPredictor
    from modelapp.training.encoding import prepare

    train, y = table(5000, 0)
    print(
        "| model | records | format | parse + predict (ms) | ours: parse + frame (ms) "
        "| predict on a ready DataFrame (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("logistic_regression", "random_forest"):
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression

        estimator = (
            LogisticRegression(max_iter=1000)
            if name == "logistic_regression"
            else RandomForestClassifier(n_estimators=50, random_state=0)
        )
        features = [
            Feature(
                name=c, kind="categorical" if c in ("plan", "country") else "numeric"
            )
            for c in COLUMNS
        ]
        model, _ = prepare(estimator, features, named=True, has_missing=True)
        model.fit(train, y)
        predictor = SklearnPredictor(model)
        gc.freeze()  # as serve does once the model is loaded (fastpaths gc_freeze)
        for records in (1, 1000):
            frame, _ = table(records, 1)
            bodies = {
                "csv": (CSVParser(), frame.to_csv(index=False, header=False).encode()),
                "json objects": (
                    JSONParser(),
                    json.dumps(json.loads(frame.to_json(orient="records"))).encode(),
                ),
            }
            repeat = 100 if records == 1 else 10
            with threadpool_limits(1):
                for fmt, (parser, body) in bodies.items():
                    media = parser.media_type

                    def served(p=parser, b=body, m=media, s=predictor):
                        return s.predict(p.parse(io.BytesIO(b), m))

                    def ours(p=parser, b=body, m=media, s=predictor):
                        return s.to_input(p.parse(io.BytesIO(b), m))

                    def given(f=frame, fitted=model):
                        return fitted.predict(f)

                    assert (served() == model.predict(frame)).all()
                    ready = ms = added = float("inf")
                    for _ in range(8):
                        ready = min(ready, cpu_ms(given, repeat))
                        ms = min(ms, cpu_ms(served, repeat))
                        added = min(added, cpu_ms(ours, repeat))
                    print(
                        f"| {name} | {records:,} | {fmt} | {ms:.3f} | {added:.3f} | "
                        f"{ready:.3f} | {ms / ready:.2f} |"
                    )


if __name__ == "__main__":
    main()
