"""``metadata.json`` through ``ModelMetadata``: what training writes is what serving reads,
older files still read, and nothing a newer writer adds is lost."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelapp.metadata import (
    SCHEMA_VERSION,
    Feature,
    ModelMetadata,
    dotted_path,
    json_safe,
)

VERSION_1 = {
    "estimator": "sklearn.tree.DecisionTreeClassifier",
    "params": {"max_depth": 3},
    "n_features": 2,
    "feature_names": ["a", "b"],
    "classes": [0, 1],
    "metrics": {"validation:accuracy": 0.9},
    "sha256": "ab" * 32,
}


def test_unversioned_file_reads_as_version_1():
    """smserve 0.1's files (no schema_version) give the same names and width."""
    metadata = ModelMetadata.from_dict(VERSION_1)
    assert metadata.schema_version == 1
    assert metadata.feature_names == ["a", "b"]
    assert metadata.n_features == 2
    assert [f.kind for f in metadata.features] == ["numeric", "numeric"]
    assert metadata.sha256 == "ab" * 32


def test_headerless_version_1_keeps_its_width():
    metadata = ModelMetadata.from_dict({"n_features": 4, "feature_names": None})
    assert metadata.n_features == 4
    assert metadata.feature_names is None


def test_round_trip_keeps_every_field_and_unknown_keys():
    """A file written and read back is the same record; keys this version does not know
    (a newer writer's) survive, and version 1 readers still find their keys."""
    metadata = ModelMetadata.from_dict({**VERSION_1, "search": {"best": {"C": 1}}})
    metadata.features[1] = Feature(
        name="b", kind="categorical", categories=["x", "y"], n_categories=2
    )
    written = json.loads(json.dumps(metadata.to_dict()))
    assert written["schema_version"] == SCHEMA_VERSION
    assert written["search"] == {"best": {"C": 1}}
    assert written["n_features"] == 2
    assert written["feature_names"] == ["a", "b"]
    again = ModelMetadata.from_dict(written)
    assert again.to_dict() == written
    assert again.features[1].categories == ["x", "y"]


def test_read_ignores_a_broken_file(tmp_path, caplog):
    assert ModelMetadata.read(tmp_path) is None
    (tmp_path / "metadata.json").write_text("[1, 2]")
    assert ModelMetadata.read(tmp_path) is None
    assert "not a JSON object" in caplog.text


def test_from_estimator_describes_a_bare_model():
    """A model trained elsewhere: its class by public path, its names and classes."""
    X = pd.DataFrame({"h": [1.0, 2.0, 3.0, 4.0], "w": [4.0, 3.0, 2.0, 1.0]})
    model = make_pipeline(StandardScaler(), DecisionTreeClassifier(random_state=0))
    model.fit(X, ["a", "b", "a", "b"])
    metadata = ModelMetadata.from_estimator(model)
    assert metadata.estimator == "sklearn.pipeline.Pipeline"
    assert metadata.feature_names == ["h", "w"]
    assert metadata.classes == ["a", "b"]
    json.dumps(metadata.to_dict())


def test_json_safe_one_rule_for_every_writer():
    """numpy values unwrapped, NaN as text, estimators by dotted path, sets as lists."""
    value = json_safe(
        {
            "a": np.int64(3),
            "b": np.float32(0.5),
            "c": {2},
            "d": float("inf"),
            "e": DecisionTreeClassifier(),
            "f": np.bool_(False),
        }
    )
    assert value == {
        "a": 3,
        "b": 0.5,
        "c": [2],
        "d": "inf",
        "e": "sklearn.tree.DecisionTreeClassifier",
        "f": False,
    }
    assert dotted_path(DecisionTreeClassifier) == "sklearn.tree.DecisionTreeClassifier"


def test_json_safe_handles_numpy_and_nan():
    """numpy values become Python ones; NaN (which JSON cannot hold) becomes a string."""
    assert json_safe({"a": np.float64(1.5), "b": np.arange(2), "c": float("nan")}) == {
        "a": 1.5,
        "b": [0, 1],
        "c": "nan",
    }


def test_json_safe_metadata_values():
    value = json_safe(
        {
            "a": np.int64(3),
            "b": np.float32(0.5),
            "c": (1, 2),
            "d": float("nan"),
            "e": DecisionTreeClassifier(),
            "f": np.array([[1, 2]]),
            "g": np.bool_(True),
        }
    )
    assert value == {
        "a": 3,
        "b": 0.5,
        "c": [1, 2],
        "d": "nan",
        "e": "sklearn.tree.DecisionTreeClassifier",
        "f": [[1, 2]],
        "g": True,
    }
