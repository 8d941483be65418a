"""The inference core without HTTP: batch checks against the model, and prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput
from modelapp.metadata import ModelMetadata
from modelapp.predictors import SklearnPredictor


def test_predicts_in_order(iris, iris_model):
    X, _ = iris
    predictor = SklearnPredictor(iris_model)
    assert predictor.predict(Batch(values=X)).tolist() == iris_model.predict(X).tolist()


def test_methods_are_those_the_model_has():
    """SVC without probability=True has no predict_proba: not offered, and refused."""
    model = SVC().fit(np.eye(4), [0, 1, 0, 1])
    predictor = SklearnPredictor(model)
    assert predictor.available_methods == ("predict", "decision_function")
    with pytest.raises(InvalidInput, match="Unknown method 'predict_proba'"):
        predictor.predict(Batch(values=np.eye(4)), "predict_proba")


def test_flat_batch_resolution(regressor_1f, iris_model):
    """A flat list is one record for a wide model, one value per record for a 1-feature
    model, and an error otherwise."""
    assert SklearnPredictor(regressor_1f).predict(
        Batch(values=np.array([1.0, 2.0]))
    ).shape == (2,)
    assert SklearnPredictor(iris_model).predict(Batch(values=np.ones(4))).shape == (1,)
    with pytest.raises(InvalidInput, match="got a flat list of 3 values"):
        SklearnPredictor(iris_model).predict(Batch(values=np.ones(3)))


def test_records_and_header_use_feature_names():
    """Objects and a reordered CSV header map onto the fitted feature order."""
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [0.0, 0.0, 1.0, 1.0]})
    model = HistGradientBoostingRegressor(
        max_iter=3, min_samples_leaf=1, random_state=0
    ).fit(frame, [0, 1, 2, 3])
    predictor = SklearnPredictor(model)
    expected = model.predict(pd.DataFrame({"a": [2.0], "b": [1.0]}))
    by_records = predictor.predict(Batch(records=[{"b": 1, "a": 2}]))
    by_header = predictor.predict(
        Batch(values=np.array([[1.0, 2.0]]), columns=["b", "a"])
    )
    assert by_records.tolist() == expected.tolist() == by_header.tolist()
    with pytest.raises(InvalidInput, match="has unknown 'c'"):
        predictor.predict(Batch(records=[{"a": 1, "b": 2, "c": 3}]))
    with pytest.raises(
        InvalidInput, match="columns 'x', 'y' lack 'a', 'b' and have unknown 'x', 'y'"
    ):
        predictor.predict(Batch(values=np.array([[1.0, 2.0]]), columns=["x", "y"]))


def test_a_record_with_many_unknown_keys_is_named_briefly():
    """A record with 100,000 unknown keys is a 400 whose detail names a few of them and
    how many more there were, not all of them (security review 3, L4)."""
    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 1.0]})
    model = DecisionTreeClassifier(random_state=0).fit(frame, [0, 1])
    record = {"a": 1, "b": 2} | {f"key{i}": i for i in range(100_000)}
    with pytest.raises(InvalidInput, match=r"has unknown 'key0', .*more\)") as caught:
        SklearnPredictor(model).predict(Batch(records=[record]))
    assert len(str(caught.value.detail)) < 300


def test_nan_policy(iris_model, regressor_1f):
    """NaN passes for models that take it; infinity never does."""
    tree = SklearnPredictor(iris_model)
    assert tree.allows_nan
    tree.predict(Batch(values=np.array([[np.nan, 1, 1, 1]])))
    with pytest.raises(InvalidInput, match="not infinity"):
        tree.predict(Batch(values=np.array([[np.inf, 1, 1, 1]])))
    with pytest.raises(InvalidInput, match="does not accept missing"):
        SklearnPredictor(regressor_1f).predict(Batch(values=np.array([[np.nan]])))


def test_width_falls_back_to_metadata(regressor_1f):
    """A model that does not know its width takes it from metadata.json."""
    predictor = SklearnPredictor(
        object.__new__(type("Bare", (), {"predict": None})),
        ModelMetadata.from_dict({"n_features": 3}),
    )
    assert predictor.n_features == 3


class RecordingTree(DecisionTreeClassifier):
    """A tree that notes how each prediction was asked for."""

    def predict(self, X, check_input=True):
        self.calls.append((check_input, X.dtype, X.flags.c_contiguous))
        return super().predict(X, check_input=check_input)


def test_trees_skip_their_own_validation_after_ours(iris):
    """A tree (whose predict documents check_input) gets the C-ordered float32 batch
    with check_input=False, and predicts exactly what model.predict does; methods
    without the switch go through scikit-learn's validation as usual."""
    X, y = iris
    model = RecordingTree(random_state=0).fit(X, y)
    model.calls = []
    predictor = SklearnPredictor(model)
    assert predictor.predict(Batch(values=np.asfortranarray(X))).tolist() == (
        model.predict(X).tolist()
    )
    assert model.calls[0] == (False, np.float32, True)
    proba = predictor.predict(Batch(values=X), "predict_proba")
    np.testing.assert_array_equal(proba, model.predict_proba(X))
    with np.errstate(divide="ignore"):  # log(0) for the classes a leaf never saw
        log_proba = predictor.predict(Batch(values=X), "predict_log_proba")
        np.testing.assert_array_equal(log_proba, model.predict_log_proba(X))


def test_unchecked_tree_still_refuses_what_validation_would(iris):
    """Wrong width, infinity, and values float32 cannot hold are still 400s."""
    X, y = iris
    predictor = SklearnPredictor(DecisionTreeClassifier(random_state=0).fit(X, y))
    with pytest.raises(InvalidInput, match="Expected 4 features per record, got 3"):
        predictor.predict(Batch(values=np.ones((1, 3))))
    with pytest.raises(InvalidInput, match="Record 2, feature 3 is inf"):
        predictor.predict(Batch(values=np.array([[1.0] * 4, [1, 1, np.inf, 1]])))
    with pytest.raises(InvalidInput, match="Record 1, feature 2 is 1e\\+39: too large"):
        predictor.predict(Batch(values=np.array([[1, 1e39, 1, 1]])))


def test_unchecked_tree_with_missing_values_matches_scikit_learn():
    """A tree that learned where missing values go predicts NaN rows as scikit-learn
    does with its own validation."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    X[rng.random((200, 3)) < 0.2] = np.nan
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int)
    model = DecisionTreeClassifier(random_state=0).fit(X, y)
    predictor = SklearnPredictor(model)
    assert predictor.allows_nan
    assert predictor.predict(Batch(values=X)).tolist() == model.predict(X).tolist()
