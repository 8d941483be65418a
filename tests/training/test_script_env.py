"""``modelapp.training.script_env``: hyperparameters, arguments and SM_* values formatted
exactly as SageMaker's training toolkit formats them for a user's script."""

from __future__ import annotations

import pytest

from modelapp.training.script_env import (
    decode_hyperparameters,
    env_value,
    split_hyperparameters,
    to_cmd_args,
)
from tests.support.script_mode import sdk_hyperparameters


@pytest.mark.parametrize(
    ("hyperparameters", "args"),
    [
        (
            {"max_depth": 3, "criterion": "gini"},
            ["--criterion", "gini", "--max_depth", "3"],
        ),
        ({"a": 1, "bb": 2}, ["-a", "1", "--bb", "2"]),
        ({"flag": True, "off": False}, ["--flag", "True", "--off", "False"]),
        ({"rate": 0.1, "big": 1e-05}, ["--big", "1e-05", "--rate", "0.1"]),
        ({"layers": [1, 2]}, ["--layers", "[1, 2]"]),
        ({"opts": {"b": 2, "a": "x"}}, ["--opts", "a=x,b=2"]),
        ({"none": None}, ["--none", ""]),
    ],
)
def test_arguments_are_formatted_as_the_toolkit_does(hyperparameters, args):
    """Sorted names, one dash for one letter, ``str()`` of the decoded JSON value, a
    mapping as ``k=v,k=v`` (the toolkit's mapping.to_cmd_args)."""
    assert to_cmd_args(hyperparameters) == args


def test_sdk_values_are_json_decoded_and_sagemaker_keys_kept_apart():
    """Every value is JSON-decoded (raw string when not JSON); sagemaker_* keys and the
    tuning metric never reach the script's arguments."""
    raw = sdk_hyperparameters("train.py", "s3://b/k.tar.gz", depth=3, name="x")
    raw["_tuning_objective_metric"] = "validation:accuracy"
    raw["plain"] = "not json"
    user, sagemaker = split_hyperparameters(decode_hyperparameters(raw))
    assert user == {"depth": 3, "name": "x", "plain": "not json"}
    assert sagemaker["sagemaker_program"] == "train.py"
    assert sagemaker["sagemaker_container_log_level"] == 20
    assert sagemaker["_tuning_objective_metric"] == "validation:accuracy"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("gini", "gini"),
        (3, "3"),
        (True, "true"),
        (None, ""),
        ({"b": 1, "a": [1]}, '{"a":[1],"b":1}'),
    ],
)
def test_sm_values_are_formatted_as_the_toolkit_does(value, text):
    assert env_value(value) == text
