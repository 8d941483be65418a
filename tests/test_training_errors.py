"""Every user mistake fails the job with exit status 1 and an ``output/failure`` that says
what to fix (first sentence first), leaving no model. Run through ``call_command``, which
is ``train``'s code path without the process start-up; ``test_train`` runs the executable."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from tests.support.training import file_channel, sagemaker_tree, write_csv

X = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 4.0], [4.0, 3.0], [5.0, 6.0], [6.0, 5.0]])
Y = np.array([0, 1, 0, 1, 0, 1])


def fail(base: Path, *args: str) -> str:
    """Run the job, expect exit status 1, and return the failure file's text."""
    with pytest.raises(CommandError) as excinfo:
        call_command("train", "--base-dir", str(base), *args)
    failure = (base / "output" / "failure").read_text()
    assert excinfo.value.returncode == 1, failure
    assert str(excinfo.value) == failure  # only the message: no traceback
    assert "Traceback" not in failure
    assert not (base / "model" / "model.joblib").exists()
    assert not (base / "output" / "success").exists()
    return failure


@pytest.fixture
def job(tmp_path):
    """A valid headerless CSV job; tests break one thing each."""
    base = sagemaker_tree(tmp_path, channels={"train": file_channel("text/csv")})
    write_csv(base / "input/data/train/data.csv", X, Y)
    return base


def set_hyperparameters(base: Path, **values: str) -> None:
    (base / "input/config/hyperparameters.json").write_text(json.dumps(values))


def test_a_valid_job_succeeds(job, capsys):
    """The fixture's job itself trains, so each failure below is its one change."""
    call_command("train", "--base-dir", str(job))
    assert (job / "model/model.joblib").is_file()
    assert (job / "output/success").read_bytes() == b""
    assert "#metric train:accuracy=" in capsys.readouterr().out


def test_missing_train_channel(tmp_path):
    """No train channel at all."""
    base = sagemaker_tree(tmp_path, channels={"validation": file_channel()})
    failure = fail(base)
    assert failure.startswith("No 'train' channel: the job has validation;")


def test_train_channel_directory_missing(tmp_path):
    """A configured channel whose directory does not exist."""
    base = sagemaker_tree(tmp_path, channels={"train": file_channel()})
    failure = fail(base)
    assert failure.startswith("Channel 'train' has no data:")
    assert "does not exist" in failure


def test_empty_channel_directory(job):
    """A channel directory without files."""
    (job / "input/data/train/data.csv").unlink()
    failure = fail(job)
    assert failure.startswith("Channel 'train' is empty:")


def test_channel_with_no_records(job):
    """Files that hold no rows (an empty file, a gzip of nothing)."""
    (job / "input/data/train/data.csv").write_text("")
    (job / "input/data/train/more.csv.gz").write_bytes(gzip.compress(b""))
    failure = fail(job)
    assert failure.startswith("Channel 'train' has no records:")


def test_files_with_different_column_counts(job):
    """Every file of a channel needs the same columns."""
    write_csv(job / "input/data/train/extra.csv", np.c_[X, X], Y)
    failure = fail(job)
    assert failure.startswith(
        "Channel 'train': extra.csv has 5 columns but data.csv has 3;"
    )


def test_validation_with_other_features_than_train(job):
    """Validation must have train's features."""
    write_csv(job / "input/data/validation/v.csv", np.c_[X, X], Y)
    (job / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": file_channel(), "validation": file_channel()})
    )
    failure = fail(job)
    assert failure.startswith(
        "Channel 'validation' does not have the features of 'train': 4 unnamed "
        "against 2 unnamed."
    )


def test_ragged_csv_row(job):
    """A row with more fields than the others."""
    (job / "input/data/train/data.csv").write_text("0,1,2\n1,2,3,4\n")
    failure = fail(job)
    assert failure.startswith("data.csv is not readable as CSV:")
    assert "Expected 3 fields in line 2, saw 4" in failure


def test_non_numeric_feature(job):
    """A feature value that is not a number names the column, file and record."""
    (job / "input/data/train/data.csv").write_text("0,1.5,2\n1,abc,3\n0,2.5,1\n")
    failure = fail(job)
    assert failure.startswith(
        "Channel 'train' has non-numeric data: column 1 (0 is the first) holds 'abc' "
        "(data.csv, record 2)."
    )


def test_non_numeric_target_for_a_regressor(job):
    """A regressor needs a numeric target; a string label is a classifier's."""
    (job / "input/data/train/data.csv").write_text("a,1,2\nb,2,3\n")
    set_hyperparameters(job, smserve_estimator="ridge")
    failure = fail(job)
    assert failure.startswith(
        "Channel 'train' has non-numeric data: the target column 0 holds 'a'"
    )


def test_record_without_target(job):
    """An empty label cell."""
    (job / "input/data/train/data.csv").write_text("0,1,2\n,2,3\n")
    failure = fail(job)
    assert failure.startswith("Channel 'train' has a record without a target value")


def test_single_column(job):
    """The target alone is not enough to train on."""
    (job / "input/data/train/data.csv").write_text("0\n1\n")
    failure = fail(job)
    assert failure.startswith("Channel 'train' has 1 column;")


def test_unknown_hyperparameter_lists_the_valid_ones(job):
    """A typo in a parameter name fails with scikit-learn's message and the valid names."""
    set_hyperparameters(job, max_dept="3")
    failure = fail(job)
    assert failure.startswith(
        "Unknown hyperparameter 'max_dept' for DecisionTreeClassifier. scikit-learn "
        "says: Invalid parameter 'max_dept'"
    )
    assert "'max_depth'" in failure


def test_invalid_hyperparameter_value(job):
    """scikit-learn's validation of a value, plus the valid parameter names."""
    set_hyperparameters(job, max_depth="-3")
    failure = fail(job)
    assert failure.startswith(
        "Invalid hyperparameter: The 'max_depth' parameter of DecisionTreeClassifier "
        "must be an int in the range [1, inf) or None. Got -3 instead."
    )
    assert "Valid parameters of DecisionTreeClassifier:" in failure


def test_unknown_nested_hyperparameter_lists_nested_names(job):
    """For a pipeline the hint lists the step__param names too."""
    set_hyperparameters(
        job,
        smserve_estimator='["standard_scaler", "logistic_regression"]',
        logisticregression__Cee="1",
    )
    failure = fail(job)
    assert failure.startswith(
        "Unknown hyperparameter 'logisticregression__Cee' for Pipeline."
    )
    assert "logisticregression__C," in failure


def test_unknown_estimator(job):
    """A short name that does not exist lists the short names."""
    set_hyperparameters(job, smserve_estimator="random_forrest")
    failure = fail(job)
    assert failure.startswith("Unknown estimator 'random_forrest':")
    assert "random_forest, random_forest_regressor" in failure


def test_not_an_estimator(job):
    """A dotted path to something that is not an estimator."""
    set_hyperparameters(job, smserve_estimator="collections.OrderedDict")
    failure = fail(job)
    assert failure.startswith(
        "Estimator 'collections.OrderedDict' resolves to collections.OrderedDict, "
        "which is not a scikit-learn estimator"
    )


def test_unknown_reserved_key(job):
    """A typo in one of our own keys is not passed on to the estimator."""
    set_hyperparameters(job, smserve_target="1")
    failure = fail(job)
    assert failure.startswith("Unknown hyperparameter 'smserve_target':")
    assert "smserve_target_column" in failure


def test_target_column_out_of_range(job):
    set_hyperparameters(job, smserve_target_column="5")
    failure = fail(job)
    assert failure.startswith(
        "Hyperparameter smserve_target_column is 5, but channel 'train' has 3 columns"
    )


def test_target_column_name_without_header(job):
    """A column name needs a header to find it in."""
    set_hyperparameters(job, smserve_target_column="label")
    failure = fail(job)
    assert failure.startswith(
        "Hyperparameter smserve_target_column names the column 'label', but channel "
        "'train' has no header;"
    )


def test_bad_header_setting(job):
    set_hyperparameters(job, smserve_header="maybe")
    failure = fail(job)
    assert failure.startswith(
        "Hyperparameter smserve_header must be one of auto, present, absent"
    )


def test_hyperparameters_file_not_json(job):
    (job / "input/config/hyperparameters.json").write_text("{max_depth: 3}")
    failure = fail(job)
    assert failure.startswith("hyperparameters.json is not valid JSON:")


def test_unknown_input_mode(job):
    (job / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "Stream"}})
    )
    failure = fail(job)
    assert failure.startswith(
        "Channel 'train' has TrainingInputMode 'Stream'; expected one of File, Pipe, "
        "FastFile."
    )


def test_unsupported_content_type(job):
    (job / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": file_channel("application/x-recordio-protobuf")})
    )
    failure = fail(job)
    assert failure.startswith(
        "Channel 'train' has ContentType 'application/x-recordio-protobuf';"
    )


def test_bad_json_line(job):
    (job / "input/data/train/data.csv").unlink()
    (job / "input/data/train/data.jsonl").write_text("[0, 1, 2]\n[1, 2, \n")
    (job / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": file_channel("application/jsonlines")})
    )
    failure = fail(job)
    assert failure.startswith("data.jsonl, line 2, is not valid JSON:")


def test_corrupt_gzip(job):
    (job / "input/data/train/data.csv").write_bytes(gzip.compress(b"0,1,2\n")[:-6])
    failure = fail(job)
    assert failure.startswith("data.csv is not a valid gzip file:")


def test_pipe_mode_without_fifo(job):
    (job / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "Pipe"}})
    )
    failure = fail(job)
    assert failure.startswith("Channel 'train' is in Pipe mode but its FIFO")
    assert os.fspath(job / "input/data/train_0") in failure


def test_a_failed_run_keeps_the_previous_model(job):
    """A failed job never replaces a model that was there before (local re-runs)."""
    call_command("train", "--base-dir", str(job))
    before = {p.name: p.read_bytes() for p in (job / "model").iterdir()}
    set_hyperparameters(job, max_depth="0")
    with pytest.raises(CommandError):
        call_command("train", "--base-dir", str(job))
    after = {p.name: p.read_bytes() for p in (job / "model").iterdir()}
    assert sorted(after) == [
        "metadata.json",
        "model.joblib",
        "model.onnx",
        "verification.npy",
    ]
    assert after == before
