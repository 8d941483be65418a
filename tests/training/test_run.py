"""``modelapp.training.run``: the metric line format and the scores."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from modelapp.training.run import format_metric, score


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
