"""A predictor kind that is not scikit-learn, for the contract suite and one real server:
a linear model kept as plain JSON (``weights.json``: feature names, weights, intercept),
no joblib, no pickle, predicting on lists of floats in plain Python.

It is what a new kind costs: a ``BasePredictor`` subclass that says which directories it
serves, loads one (passing the file that identifies it as ``artifact``), says what the
model takes (``n_features_of``, ``feature_names_of``) and adapts ``call`` to the model's
own interface.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelapp.metadata import ModelMetadata
from modelapp.predictors import BasePredictor, ModelLoadError

WEIGHTS_FILE = "weights.json"


class LinearModel:
    """``predict(rows)`` = rows . weights + intercept, for rows given as lists."""

    def __init__(
        self, features: list[str], weights: list[float], intercept: float
    ) -> None:
        self.features = features
        self.weights = weights
        self.intercept = intercept

    @classmethod
    def from_json(cls, text: str) -> LinearModel:
        data = json.loads(text)
        return cls(data["features"], data["weights"], data["intercept"])

    def to_json(self) -> str:
        return json.dumps(
            {
                "features": self.features,
                "weights": self.weights,
                "intercept": self.intercept,
            }
        )

    def predict(self, rows: list[list[float]]) -> list[float]:
        if any(len(row) != len(self.weights) for row in rows):
            raise ValueError(f"each row must have {len(self.weights)} values")
        return [
            sum(w * x for w, x in zip(self.weights, row, strict=True)) + self.intercept
            for row in rows
        ]


class LinearJSONPredictor(BasePredictor):
    """A ``LinearModel`` from ``weights.json``."""

    methods = ("predict",)

    @classmethod
    def handles(cls, model_dir: Path) -> bool:
        return (model_dir / WEIGHTS_FILE).is_file()

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, metadata: ModelMetadata | None
    ) -> LinearJSONPredictor:
        artifact = model_dir / WEIGHTS_FILE
        try:
            model = LinearModel.from_json(artifact.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{WEIGHTS_FILE} is not a linear model: {exc}"
            ) from exc
        return cls(model, None, artifact)

    def n_features_of(self, model: Any) -> int | None:
        return len(model.weights)

    def feature_names_of(self, model: Any) -> Any:
        return model.features

    def call(self, method: str, matrix: Any) -> np.ndarray:
        return np.asarray(getattr(self.model, method)(np.asarray(matrix).tolist()))


def save_linear(model: LinearModel, model_dir: Path) -> None:
    (model_dir / WEIGHTS_FILE).write_text(model.to_json())
