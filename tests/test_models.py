"""TrainedModel from metadata.json or the estimator (upsert by checksum). TrainingRun rows
are ``training/record.py``'s: tests/training/test_record.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelapp.metadata import SCHEMA_VERSION, ModelMetadata
from modelapp.models import TrainedModel
from modelapp.paths import SageMakerPaths
from modelapp.registry import load_model
from tests.support.models import write_model


def test_describe_reads_training_metadata():
    """metadata.json as ``manage.py train`` writes it maps onto the fields."""
    metadata = {
        "estimator": "sklearn.tree.DecisionTreeClassifier",
        "params": {"max_depth": 3, "criterion": "gini"},
        "n_features": 2,
        "feature_names": ["a", "b"],
        "classes": [0, 1],
        "metrics": {"validation:accuracy": 0.9},
        "versions": {"sklearn": "1.9.1"},
        "training_job_name": "job-1",
        "started_at": "2026-01-02T03:04:05Z",
        "finished_at": "2026-01-02T03:04:09Z",
    }
    values = TrainedModel.describe(ModelMetadata.from_dict(metadata))
    assert values["source"] == TrainedModel.SOURCE_METADATA
    assert values["estimator"] == "sklearn.tree.DecisionTreeClassifier"
    assert values["params"] == {"max_depth": 3, "criterion": "gini"}
    assert values["feature_names"] == ["a", "b"]
    assert values["n_features"] == 2
    assert values["classes"] == [0, 1]
    assert values["metrics"] == {"validation:accuracy": 0.9}
    assert values["training_job_name"] == "job-1"
    assert values["training_started_at"].isoformat() == "2026-01-02T03:04:05+00:00"
    assert (values["training_finished_at"] - values["training_started_at"]).seconds == 4
    # The file as smserve reads it: every key of it kept, the schema version added.
    assert {k: values["metadata"][k] for k in metadata} == metadata
    assert values["metadata"]["schema_version"] == SCHEMA_VERSION


def test_describe_without_metadata_asks_the_estimator():
    """A model trained elsewhere is described by n_features_in_, feature_names_in_,
    classes_ and get_params()."""
    X = pd.DataFrame({"height": [1.0, 2.0, 3.0, 4.0], "width": [4.0, 3.0, 2.0, 1.0]})
    model = LogisticRegression(C=0.5).fit(X, ["a", "b", "a", "b"])
    values = TrainedModel.describe(None, model)
    assert values["source"] == TrainedModel.SOURCE_ESTIMATOR
    assert values["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert values["n_features"] == 2
    assert values["feature_names"] == ["height", "width"]
    assert values["classes"] == ["a", "b"]
    assert values["params"]["C"] == 0.5
    json.dumps(values["params"])  # storable as JSON


@pytest.mark.django_db
def test_record_upserts_by_checksum(tmp_path, iris_model):
    """Loading the same artifact twice keeps one row: first seen stays, last seen moves,
    the path it was loaded from is refreshed."""
    write_model(tmp_path / "one", iris_model, {"estimator": "x.Tree", "n_features": 4})
    write_model(tmp_path / "two", iris_model, {"estimator": "x.Tree", "n_features": 4})
    first = TrainedModel.record(load_model(SageMakerPaths(tmp_path / "one").model_dir))
    second = TrainedModel.record(load_model(SageMakerPaths(tmp_path / "two").model_dir))
    assert TrainedModel.objects.count() == 1
    assert second.pk == first.pk
    assert second.first_seen == first.first_seen
    assert second.last_seen > first.last_seen
    assert second.loaded_from.startswith(str(tmp_path / "two"))
    assert second.artifact_size == (tmp_path / "two/model/model.joblib").stat().st_size
    assert str(second) == f"Tree {second.sha256[:12]}"


@pytest.mark.django_db
def test_record_model_without_metadata(tmp_path, iris_model):
    """No metadata.json: the row says what the estimator knows."""
    write_model(tmp_path, iris_model)
    row = TrainedModel.record(load_model(SageMakerPaths(tmp_path).model_dir))
    assert row.source == TrainedModel.SOURCE_ESTIMATOR
    assert row.n_features == 4
    assert row.classes == [0, 1, 2]
    assert row.params["random_state"] == 0
