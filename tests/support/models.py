"""Estimators for tests that need a model to misbehave on purpose. They live in an
importable module so that the real server can unpickle them."""

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class _ZeroClassifier(ClassifierMixin, BaseEstimator):
    """Learns only the width and the classes."""

    def fit(self, X, y):
        X = np.asarray(X)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.unique(y)
        return self


class SlowClassifier(_ZeroClassifier):
    """Predicts 0; a record whose first feature is 999 makes it sleep ``delay`` seconds."""

    def __init__(self, delay: float = 3.0):
        self.delay = delay

    def predict(self, X):
        X = np.asarray(X)
        if (X[:, 0] == 999).any():
            time.sleep(self.delay)
        return np.zeros(len(X), dtype=int)


class BuggyClassifier(_ZeroClassifier):
    """Works for one record (so the warm-up passes) and fails like a bug for more."""

    def predict(self, X):
        if len(X) > 1:
            raise ZeroDivisionError("deliberate bug for the 500 test")
        return np.zeros(len(X), dtype=int)
