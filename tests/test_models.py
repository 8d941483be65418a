"""TrainedModel from metadata.json or the estimator (upsert by checksum), and TrainingRun
rows written by ``manage.py train`` — which trains just the same without a database."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelapp.metadata import ModelMetadata, json_safe
from modelapp.models import TrainedModel, TrainingRun
from modelapp.paths import SageMakerPaths
from modelapp.registry import load_model
from modelapp.training import run
from modelapp.training.record import RunRecorder
from tests.support.models import write_model
from tests.support.training import run_train, write_channel


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
    assert values["metadata"]["schema_version"] == 2


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


def test_json_safe_handles_numpy_and_nan():
    """numpy values become Python ones; NaN (which JSON cannot hold) becomes a string."""
    assert json_safe({"a": np.float64(1.5), "b": np.arange(2), "c": float("nan")}) == {
        "a": 1.5,
        "b": [0, 1],
        "c": "nan",
    }


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


@pytest.mark.django_db(transaction=True)
def test_run_recorder_writes_a_succeeded_run(tmp_path):
    """A real training run leaves one succeeded row with channels, rows and metrics, and
    its model's checksum."""
    write_channel(tmp_path / "data" / "train.csv")
    write_channel(tmp_path / "data" / "valid.csv", rows=20, seed=1)
    paths = SageMakerPaths(tmp_path / "ml")
    recorder = RunRecorder.start(paths)
    assert TrainingRun.objects.get().status == TrainingRun.RUNNING
    result = run.train(
        paths,
        hp_overrides={"max_depth": "2"},
        channel_overrides={
            "train": tmp_path / "data" / "train.csv",
            "validation": tmp_path / "data" / "valid.csv",
        },
        on_finish=recorder.finish,
    )
    assert result.succeeded
    row = TrainingRun.objects.get()
    assert row.status == TrainingRun.SUCCEEDED
    assert row.hyperparameters["max_depth"] == "2"
    assert row.channels["train"]["rows"] == 60
    assert row.channels["validation"]["rows"] == 20
    assert "validation:accuracy" in row.metrics
    assert row.model_sha256 == json.loads(paths.metadata_file.read_text())["sha256"]
    assert row.duration_seconds > 0
    assert row.finished_at >= row.started_at


@pytest.mark.django_db(transaction=True)
def test_run_recorder_writes_a_failed_run(tmp_path):
    """A run that fails (no train channel) is recorded as failed, with the reason."""
    paths = SageMakerPaths(tmp_path / "ml")
    recorder = RunRecorder.start(paths)
    result = run.train(paths, on_finish=recorder.finish)
    assert not result.succeeded
    row = TrainingRun.objects.get()
    assert row.status == TrainingRun.FAILED
    assert "train" in row.failure_reason


def test_train_without_a_reachable_database_still_trains(tmp_path):
    """``manage.py train`` with a PostgreSQL that is not there: it logs that, writes the
    model and exits 0."""
    channel = write_channel(tmp_path / "train.csv")
    env = {
        "DATABASE_URL": "postgres://nobody:x@127.0.0.1:1/nothing",
        "SMSERVE_STATE_DIR": str(tmp_path / "state"),
    }
    done = run_train(
        tmp_path / "ml", "--channel", f"train={channel}", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "training goes on without the database" in done.stderr
    assert (tmp_path / "ml" / "model" / "model.joblib").is_file()
    assert "#metric train:accuracy=" in done.stdout


def test_train_records_the_run_in_its_database(tmp_path):
    """``manage.py train`` migrates its (SQLite) database and records the run there."""
    import sqlite3

    channel = write_channel(tmp_path / "train.csv")
    env = {"DATABASE_URL": "", "SMSERVE_STATE_DIR": str(tmp_path / "st")}
    done = run_train(
        tmp_path / "ml", "--channel", f"train={channel}", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(tmp_path / "st" / "smserve.sqlite3")
    try:
        rows = conn.execute(
            "SELECT status, channels FROM modelapp_trainingrun"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    assert rows[0][0] == "succeeded"
    assert json.loads(rows[0][1])["train"]["rows"] == 60
