"""``modelapp.training.estimators``: short names, dotted paths, pipelines and seeds."""

from __future__ import annotations

import pytest
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from modelapp.training import ClientError
from modelapp.training.estimators import build, configure, dotted_path, resolve


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
