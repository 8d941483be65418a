"""``modelapp.training.environment``: hyperparameter conversion, reserved keys, and the
channels found in the data dir."""

from __future__ import annotations

import math
import os
import re

import pytest

from modelapp.paths import SageMakerPaths
from modelapp.training import ClientError
from modelapp.training.environment import (
    Hyperparameters,
    convert_value,
    infer_channels,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5", 5),
        ("-3", -3),
        ("0.25", 0.25),
        ("1e-3", 0.001),
        ("true", True),
        ("True", True),
        ("FALSE", False),
        ("null", None),
        ("None", None),
        ("gini", "gini"),
        ('"gini"', "gini"),  # JSON-encoded, as the SDK's framework estimators send
        ('"5"', 5),  # a JSON-encoded number is still a number
        ('"True"', True),
        ("[100, 50]", [100, 50]),
        ("(100, 50)", (100, 50)),
        ('{"0": 1, "1": 5}', {"0": 1, "1": 5}),
        ("{0: 1, 1: 5}", {0: 1, 1: 5}),
        ('"[1, 2]"', [1, 2]),
        ("sqrt", "sqrt"),
        ("sklearn.svm.SVC", "sklearn.svm.SVC"),
        ("log loss", "log loss"),
        (" gini", " gini"),
        ("", ""),
        (3, 3),  # already typed (a local run's JSON)
    ],
)
def test_convert_value(raw, expected):
    """Strings become the value they spell: JSON first, then words and Python literals,
    else the string itself."""
    value = convert_value(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_convert_value_nan_and_infinity():
    """JSON's NaN and Infinity are floats; the bare words nan/inf stay strings."""
    assert math.isnan(convert_value("NaN"))
    assert convert_value("Infinity") == math.inf
    assert convert_value("inf") == "inf"


def test_reserved_keys_and_ignored_keys_are_split_from_estimator_params():
    """Our keys are typed and removed; SageMaker's are ignored; the rest is params."""
    raw = {
        "smserve_estimator": '"random_forest"',
        "smserve_target_column": "label",
        "smserve_header": "Present",
        "smserve_random_seed": "42",
        "sagemaker_region": '"eu-west-1"',
        "_tuning_objective_metric": "validation:f1",
        "n_estimators": "10",
        "max_features": "sqrt",
    }
    hp = Hyperparameters.from_raw(raw)
    assert hp.estimator == "random_forest"
    assert hp.target_column == "label"
    assert hp.header == "present"
    assert hp.random_seed == 42
    assert hp.params == {"n_estimators": 10, "max_features": "sqrt"}
    assert hp.ignored == ["_tuning_objective_metric", "sagemaker_region"]
    assert hp.raw == raw


def test_defaults_without_hyperparameters():
    hp = Hyperparameters.from_raw({})
    assert hp.estimator == "sklearn.tree.DecisionTreeClassifier"
    assert hp.target_column == 0
    assert hp.header == "auto"
    assert hp.random_seed is None
    assert hp.params == {}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("smserve_random_seed", "-1", "must be a whole number >= 0"),
        ("smserve_random_seed", "1.5", "must be a whole number >= 0"),
        ("smserve_target_column", "1.5", "must be a column index"),
        ("smserve_header", "yes", "must be one of auto, present, absent"),
        ("smserve_estimater", "svc", "Unknown hyperparameter 'smserve_estimater'"),
    ],
)
def test_bad_reserved_values(key, value, message):
    with pytest.raises(ClientError, match=re.escape(message)):
        Hyperparameters.from_raw({key: value})


def test_infer_channels_skips_manifests_and_finds_fifos(tmp_path):
    paths = SageMakerPaths(tmp_path)
    (paths.data_dir / "train").mkdir(parents=True)
    (paths.data_dir / "train-manifest").write_text("x")
    os.mkfifo(paths.data_dir / "validation_0")
    channels = infer_channels(paths)
    assert {name: c.input_mode for name, c in channels.items()} == {
        "train": "File",
        "validation": "Pipe",
    }
