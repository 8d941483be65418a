"""Model directories for the serving side, and estimators for tests that need a model to
misbehave on purpose. They live in an importable module so that the real server can
unpickle them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


def write_model(
    base: Path, model: Any, metadata: dict | None = None, name: str = "model.joblib"
) -> Path:
    """A SageMaker base dir whose model/ holds ``model`` (and ``metadata.json``)."""
    model_dir = base / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / name
    joblib.dump(model, path)
    if metadata is not None:
        (model_dir / "metadata.json").write_text(json.dumps(metadata))
    return path


class _ZeroClassifier(ClassifierMixin, BaseEstimator):
    """Learns only the width and the classes."""

    def fit(self, X, y):
        X = np.asarray(X)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.unique(y)
        return self


class SlowPredictClassifier(_ZeroClassifier):
    """Predicts 0; a record whose first feature is 999 makes it slow: it touches a file
    named after its process in ``started_dir`` (when given), then waits until
    ``release_file`` exists, or ``delay`` seconds when there is none. A test waits on the
    started file and releases the request, instead of guessing with ``sleep``."""

    def __init__(
        self, delay: float = 3.0, started_dir: str = "", release_file: str = ""
    ):
        self.delay = delay
        self.started_dir = started_dir
        self.release_file = release_file

    def predict(self, X):
        X = np.asarray(X)
        if (X[:, 0] == 999).any():
            if self.started_dir:
                (Path(self.started_dir) / str(os.getpid())).touch()
            if self.release_file:
                end = time.monotonic() + self.delay
                while not Path(self.release_file).exists() and time.monotonic() < end:
                    time.sleep(0.02)
            else:
                time.sleep(self.delay)
        return np.zeros(len(X), dtype=int)


class WarmUpFailingClassifier(_ZeroClassifier):
    """Loads, and fails every prediction (its warm-up included) with a data error."""

    def predict(self, X):
        raise ValueError("this model was saved broken")


class BuggyClassifier(_ZeroClassifier):
    """Works for one record (so the warm-up passes) and fails like a bug for more."""

    def predict(self, X):
        if len(X) > 1:
            raise ZeroDivisionError("deliberate bug for the 500 test")
        return np.zeros(len(X), dtype=int)
