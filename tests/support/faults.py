"""Estimators whose slow steps announce themselves, so a fault test can strike while a
worker is inside ``predict`` or while the model loads, waiting on a file rather than a
clock. Importable by dotted path, so the real server can unpickle them."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from tests.support.servers import ServeProcess


class AnnouncingSlowClassifier(ClassifierMixin, BaseEstimator):
    """Predicts 0; for a record whose first feature is 999 it first writes a file named
    after its process into ``marker_dir``, then sleeps ``delay`` seconds."""

    def __init__(self, marker_dir: str = "", delay: float = 30.0):
        self.marker_dir = marker_dir
        self.delay = delay

    def fit(self, X, y):
        X = np.asarray(X)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        X = np.asarray(X)
        if (X[:, 0] == 999).any():
            marker = Path(self.marker_dir) / f"{os.getpid()}.{uuid.uuid4().hex}"
            marker.write_text("")
            time.sleep(self.delay)
        return np.zeros(len(X), dtype=int)


class SlowLoadingClassifier(AnnouncingSlowClassifier):
    """Unpickling it writes ``<marker_dir>/loading`` and then takes ``load_delay`` s."""

    def __init__(self, marker_dir: str = "", delay: float = 0.0, load_delay=30.0):
        super().__init__(marker_dir, delay)
        self.load_delay = load_delay

    def __setstate__(self, state):
        super().__setstate__(state)
        (Path(self.marker_dir) / "loading").write_text(str(os.getpid()))
        time.sleep(self.load_delay)


def busy_pids(marker_dir: Path) -> set[int]:
    """The processes that have entered a slow ``predict``."""
    return {int(p.name.split(".")[0]) for p in marker_dir.iterdir()}


class UnwaitedServe(ServeProcess):
    """``ServeProcess`` whose ``start`` returns as soon as serve is launched, for a test
    that strikes before the server is up."""

    def wait_up(self, expect_status: int | None, deadline: float) -> None:
        return None
