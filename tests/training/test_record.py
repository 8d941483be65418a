"""``modelapp.training.record``: TrainingRun rows written by ``manage.py train`` — which
trains just the same without a database."""

from __future__ import annotations

import json
import sqlite3

import pytest

from modelapp.models import TrainingRun
from modelapp.paths import SageMakerPaths
from modelapp.training import run
from modelapp.training.record import RunRecorder
from tests.support.training import run_train, write_channel


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
    """``manage.py train`` migrates its (SQLite) database and records the run there.
    docs/settings.md, Settings: "`SMSERVE_STATE_DIR`".
    """
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
