"""The training building blocks on their own: hyperparameter conversion, reserved keys,
estimator resolution, header detection, JSON-safe metadata and the metric line format."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from modelapp.formats import looks_like_header
from modelapp.metadata import json_safe
from modelapp.paths import SageMakerPaths
from modelapp.training import ClientError
from modelapp.training.environment import (
    Hyperparameters,
    convert_value,
    infer_channels,
)
from modelapp.training.estimators import build, configure, dotted_path, resolve
from modelapp.training.run import format_metric, score


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


def test_resolve_short_names_and_dotted_paths():
    assert type(resolve("decision_tree")) is DecisionTreeClassifier
    assert dotted_path(resolve("random_forest")) == (
        "sklearn.ensemble.RandomForestClassifier"
    )
    assert dotted_path(resolve("sklearn.svm.SVR")) == "sklearn.svm.SVR"
    with pytest.raises(ClientError, match="Unknown estimator 'nope'"):
        resolve("nope")


def test_build_a_pipeline_and_set_nested_params_with_a_seed():
    """A list is a pipeline; a random seed fills every unset random_state."""
    model = build(["standard_scaler", "pca", "random_forest"])
    assert isinstance(model, Pipeline)
    configure(
        model,
        {"pca__n_components": 2, "randomforestclassifier__random_state": 3},
        random_seed=9,
    )
    params = model.get_params()
    assert params["pca__n_components"] == 2
    assert params["pca__random_state"] == 9
    assert params["randomforestclassifier__random_state"] == 3


def testlooks_like_header():
    """A first line without numbers above a line with numbers is a header; a string
    label in a data row is not."""
    assert looks_like_header(b"label,a,b\n0,1,2\n")
    assert looks_like_header(b"label,a,b\n")
    assert not looks_like_header(b"0,1,2\n1,2,3\n")
    assert not looks_like_header(b"setosa,5.1,3.5\nvirginica,6.1,2.5\n")
    assert not looks_like_header(b"")


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


def test_metric_line_matches_the_documented_regex():
    """The documented MetricDefinitions regex catches every metric line."""
    regex = r"#metric validation:accuracy=([0-9.eE+-]+)"
    line = format_metric("validation:accuracy", 0.9666666666)
    assert line == "#metric validation:accuracy=0.966667"
    assert float(re.search(regex, line).group(1)) == pytest.approx(0.966667)
    tiny = format_metric("train:rmse", 1.5e-7)
    assert float(re.search(r"#metric train:rmse=([0-9.eE+-]+)", tiny).group(1)) == (
        pytest.approx(1.5e-7)
    )


def test_score_binary_f1_is_for_the_second_class():
    model = DecisionTreeClassifier().fit([[0], [1]], ["no", "yes"])
    y_true = np.array(["yes", "yes", "no", "no"])
    y_pred = np.array(["yes", "no", "no", "no"])
    metrics = score("classification", model, y_true, y_pred)
    assert metrics == {"accuracy": 0.75, "f1": pytest.approx(2 / 3)}


def test_score_regression():
    metrics = score("regression", None, np.array([1.0, 2.0, 3.0]), np.array([1, 2, 5]))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert metrics["r2"] == pytest.approx(1 - 4 / 2)


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
