"""The predictor contract: the same tests for every predictor kind and model shape.

In the style of Django's ``SessionTestsMixin``: each entry of ``KINDS`` is a predictor
class and a small factory that fits a real model; every test below runs for every entry.
A new predictor kind proves itself by joining ``KINDS`` (one line, plus its factory), and
every predictor is made in one place, ``build_predictor``, the way the registry makes it.
Nothing here assumes scikit-learn: a factory says how its model is saved (``save``) and
how the model itself answers (``ask``), as ``linear`` does for a plain-JSON model.

What a predictor promises, whatever the model: its predictions are the model's own for
the same rows, for every method it offers; it offers exactly the methods the model has;
wrong widths, NaN where the model cannot take it, infinity and unknown methods are
``InvalidInput`` with a code; ``warm_up()`` works; records sent as objects are mapped by
feature name when the model knows its names, and refused when it does not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from django.conf import settings
from django.test import override_settings
from sklearn.datasets import load_iris, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput
from modelapp.metadata import ModelMetadata
from modelapp.predictors import BasePredictor, SklearnPredictor
from modelapp.predictors import compiled as compiled_engine
from tests.support.linear_kind import LinearJSONPredictor, LinearModel, save_linear

PROBA = ("predict", "predict_proba", "predict_log_proba")


def save_joblib(model: Any, model_dir: Path) -> None:
    """As ``train`` saves a model: ``model.joblib``."""
    joblib.dump(model, model_dir / "model.joblib")


def ask_directly(model: Any, method: str, rows: Any) -> Any:
    """The model's own method on the rows, as its trainer would call it."""
    return getattr(model, method)(rows)


@dataclass(frozen=True)
class Fitted:
    """A real fitted model and what the contract expects of a predictor serving it."""

    model: Any
    X: np.ndarray  # rows to predict on, off the training points
    methods: tuple[str, ...]  # the methods a request may ask for, default first
    allows_nan: bool  # whether the model takes missing values
    metadata: dict[str, Any] | None = None  # metadata.json beside the model, if any
    frame_names: list[str] | None = None  # set when fitted on a DataFrame
    model_names: list[str] | None = None  # names the model keeps otherwise
    compiled: bool = True  # whether the compiled engine (compiled.py) may serve it
    # How the model is written into a model directory.
    save: Callable[[Any, Path], None] = save_joblib
    # How the model itself answers a method on rows (an ndarray, or a DataFrame when
    # fitted on one).
    ask: Callable[[Any, str, Any], Any] = ask_directly

    @property
    def feature_names(self) -> list[str] | None:
        """The names records may use: from the DataFrame, else from metadata.json."""
        if self.frame_names is not None:
            return self.frame_names
        if self.model_names is not None:
            return self.model_names
        return (self.metadata or {}).get("feature_names")

    def expected(self, method: str, X: np.ndarray) -> np.ndarray:
        """The model's own answer, asked directly, as its trainer would ask it."""
        rows = pd.DataFrame(X, columns=self.frame_names) if self.frame_names else X
        with np.errstate(divide="ignore"):  # log(0) for classes a leaf never saw
            return np.asarray(self.ask(self.model, method, rows))


IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _iris() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iris, and rows to predict on: every 7th one, nudged off the training points."""
    X, y = load_iris(return_X_y=True)
    return X, y, X[::7] + 0.05


def tree() -> Fitted:
    """A decision tree trained as ``train`` does: metadata.json names its features."""
    X, y, rows = _iris()
    model = DecisionTreeClassifier(random_state=0).fit(X, y)
    metadata = {
        "estimator": "sklearn.tree.DecisionTreeClassifier",
        "n_features": 4,
        "feature_names": IRIS_NAMES,
    }
    return Fitted(model, rows, PROBA, allows_nan=True, metadata=metadata)


def forest() -> Fitted:
    """A forest trained elsewhere: a bare joblib, no metadata.json."""
    X, y, rows = _iris()
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    return Fitted(model, rows, PROBA, allows_nan=True)


def forest_scikit_learn_only() -> Fitted:
    """The same forest with the compiled engine off: scikit-learn answers every
    method, so every answer is bit for bit the model's own."""
    return replace(forest(), compiled=False)


def scaled_pipeline() -> Fitted:
    """A scaler and a linear classifier, fitted on a DataFrame (names from the model)."""
    X, y, rows = _iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(pd.DataFrame(X, columns=IRIS_NAMES), y)
    methods = (*PROBA, "decision_function")
    return Fitted(model, rows, methods, allows_nan=False, frame_names=IRIS_NAMES)


def regressor() -> Fitted:
    """A linear regressor; metadata.json gives only its width."""
    X, y = make_regression(n_samples=80, n_features=3, noise=0.1, random_state=0)
    model = Ridge().fit(X, y)
    metadata = {"estimator": "sklearn.linear_model.Ridge", "n_features": 3}
    return Fitted(model, X[::9] + 0.5, ("predict",), False, metadata=metadata)


def linear() -> Fitted:
    """Not scikit-learn: a linear model kept as plain JSON, which predicts on lists
    (``tests/support/linear_kind.py``); its file names its features."""
    X, y = make_regression(n_samples=40, n_features=3, noise=0.1, random_state=1)
    weights = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]
    model = LinearModel(["a", "b", "c"], weights[:3].tolist(), float(weights[3]))
    return Fitted(
        model,
        X[::5] + 0.25,
        ("predict",),
        allows_nan=False,
        model_names=model.features,
        compiled=False,
        save=save_linear,
        ask=lambda model, method, rows: getattr(model, method)(rows.tolist()),
    )


# A new kind is one line: (its class, a factory of a fitted model it serves).
KINDS: list[tuple[type[BasePredictor], Callable[[], Fitted]]] = [
    (SklearnPredictor, tree),
    (SklearnPredictor, forest),
    (SklearnPredictor, forest_scikit_learn_only),
    (SklearnPredictor, scaled_pipeline),
    (SklearnPredictor, regressor),
    (LinearJSONPredictor, linear),
]


def build_predictor(
    kind: type[BasePredictor], fitted: Fitted, base: Path
) -> BasePredictor:
    """The one place a predictor is made, as the registry makes it: the model (and its
    metadata.json) written to a model dir, then ``kind.from_model_dir``."""
    model_dir = base / "model"
    model_dir.mkdir(parents=True)
    fitted.save(fitted.model, model_dir)
    if fitted.metadata is not None:
        (model_dir / "metadata.json").write_text(json.dumps(fitted.metadata))
    assert kind.handles(model_dir)
    smserve = {**settings.SMSERVE, "COMPILED_ENGINE": fitted.compiled}
    with override_settings(SMSERVE=smserve):
        return kind.from_model_dir(model_dir, ModelMetadata.read(model_dir))


@dataclass
class Case:
    predictor: BasePredictor
    fitted: Fitted


@pytest.fixture(
    scope="module",
    params=KINDS,
    ids=[f"{kind.__name__}-{factory.__name__}" for kind, factory in KINDS],
)
def case(request, tmp_path_factory) -> Case:
    kind, factory = request.param
    fitted = factory()
    base = tmp_path_factory.mktemp(factory.__name__)
    return Case(build_predictor(kind, fitted, base), fitted)


def codes(exc_info: pytest.ExceptionInfo) -> Any:
    return exc_info.value.get_codes()


def assert_served(case: Case, method: str, got: Any, expected: Any) -> None:
    """The model's own answer: to the bit from scikit-learn; within the tolerance the
    compiled engine states where it serves a method that answers numbers (labels are
    exact either way)."""
    report = case.predictor.engine_report
    compiled = (
        report is not None and report.methods.get(method) == compiled_engine.ENGINE
    )
    if compiled and np.asarray(expected).dtype.kind in "fc":
        np.testing.assert_allclose(
            got,
            expected,
            rtol=compiled_engine.RTOL,
            atol=compiled_engine.ATOL,
            err_msg=method,
        )
    else:
        np.testing.assert_array_equal(got, expected, err_msg=method)


def test_engine_per_method(case):
    """Which engine serves each method is known, and scikit-learn's alone when off; a
    kind without a compiled engine reports none."""
    report = case.predictor.engine_report
    if report is None:
        assert not case.fitted.compiled, "a kind that may compile reports its engines"
        return
    assert set(report.methods) == set(case.fitted.methods)
    if not case.fitted.compiled:
        assert set(report.methods.values()) == {compiled_engine.SKLEARN}


# --- predictions ---------------------------------------------------------------------
def test_predictions_are_the_models_own(case):
    """The default method answers exactly what the model's own predict does."""
    X = case.fitted.X
    assert case.predictor.default_method == "predict"
    assert_served(
        case,
        "predict",
        case.predictor.predict(Batch(values=X)),
        case.fitted.expected("predict", X),
    )


def test_every_offered_method_is_the_models_own(case):
    """Each method the predictor offers answers what the model's method does."""
    X = case.fitted.X
    for method in case.predictor.available_methods:
        with np.errstate(divide="ignore"):
            got = case.predictor.predict(Batch(values=X), method)
        assert_served(case, method, got, case.fitted.expected(method, X))


def test_offers_exactly_the_methods_the_model_has(case):
    assert case.predictor.available_methods == case.fitted.methods


def test_invoke_answers_like_predict(case):
    """``invoke`` (what the view calls once) predicts with the method asked for in the
    custom attributes, else the default, and counts the records."""
    X = case.fitted.X
    batch = Batch(values=X)
    result = case.predictor.invoke(batch, {}, "text/csv", "application/json")
    assert (result.method, result.records) == ("predict", len(X))
    assert_served(
        case, "predict", result.predictions, case.fitted.expected("predict", X)
    )
    last = case.fitted.methods[-1]
    with np.errstate(divide="ignore"):
        result = case.predictor.invoke(batch, {"method": last}, "text/csv", "text/csv")
    assert result.method == last
    assert_served(case, last, result.predictions, case.fitted.expected(last, X))


def test_one_record_as_a_flat_list(case):
    """A flat list as wide as the model is one record."""
    row = case.fitted.X[0]
    assert_served(
        case,
        "predict",
        case.predictor.predict(Batch(values=row.copy())),
        case.fitted.expected("predict", row.reshape(1, -1)),
    )


# --- refusals --------------------------------------------------------------------------
def test_wrong_width_is_invalid_input(case):
    width = case.fitted.X.shape[1]
    with pytest.raises(
        InvalidInput, match=f"Expected {width} features per record, got {width + 1}"
    ) as refused:
        case.predictor.predict(Batch(values=np.ones((2, width + 1))))
    assert codes(refused) == "invalid_input"


@pytest.mark.parametrize("method", ["transform", "fit", "predict_joint_log_proba"])
def test_unknown_method_is_invalid_input(case, method):
    """A method the predictor does not offer is refused with its own code, naming the
    methods it does offer."""
    with pytest.raises(InvalidInput, match=f"Unknown method '{method}'") as refused:
        case.predictor.predict(Batch(values=case.fitted.X), method)
    assert codes(refused) == "unknown_method"
    assert ", ".join(case.fitted.methods) in str(refused.value.detail)


def test_a_method_the_model_lacks_is_unknown(case):
    """Methods of the kind that this model does not have are not offered."""
    lacking = [m for m in type(case.predictor).methods if m not in case.fitted.methods]
    for method in lacking:
        with pytest.raises(InvalidInput, match=f"Unknown method '{method}'") as refused:
            case.predictor.predict(Batch(values=case.fitted.X), method)
        assert codes(refused) == "unknown_method"


def test_nan_only_where_the_model_takes_it(case):
    """NaN is predicted as the model would where it takes missing values, else refused
    naming the record and feature."""
    X = case.fitted.X[:3].copy()
    X[1, 0] = np.nan
    assert case.predictor.allows_nan is case.fitted.allows_nan
    if case.fitted.allows_nan:
        assert_served(
            case,
            "predict",
            case.predictor.predict(Batch(values=X)),
            case.fitted.expected("predict", X),
        )
    else:
        with pytest.raises(
            InvalidInput, match="Record 2, feature 1 is nan: .*does not accept missing"
        ) as refused:
            case.predictor.predict(Batch(values=X))
        assert codes(refused) == "invalid_input"


def test_infinity_is_always_refused(case):
    X = case.fitted.X[:2].copy()
    X[0, 1] = np.inf
    with pytest.raises(InvalidInput, match="Record 1, feature 2 is inf") as refused:
        case.predictor.predict(Batch(values=X))
    assert codes(refused) == "invalid_input"


# --- warm-up ---------------------------------------------------------------------------
def test_warm_up_works(case):
    """The warm-up the registry runs at load succeeds, knowing the model's width."""
    assert case.predictor.n_features == case.fitted.X.shape[1]
    case.predictor.warm_up()


# --- records as objects ----------------------------------------------------------------
def test_records_by_feature_name(case):
    """Objects are mapped by feature name in any key order when the model knows its
    names; otherwise they are refused and the client told to send arrays."""
    X = case.fitted.X[:3]
    names = case.fitted.feature_names
    if names is None:
        records = [{f"x{i}": v for i, v in enumerate(row)} for row in X.tolist()]
        with pytest.raises(
            InvalidInput, match="trained without feature names"
        ) as refused:
            case.predictor.predict(Batch(records=records))
        assert codes(refused) == "invalid_input"
        return
    assert case.predictor.feature_names == names
    records = [dict(reversed(list(zip(names, row, strict=True)))) for row in X.tolist()]
    assert_served(
        case,
        "predict",
        case.predictor.predict(Batch(records=records)),
        case.fitted.expected("predict", X),
    )
    missing = [{k: v for k, v in records[0].items() if k != names[0]}]
    with pytest.raises(InvalidInput, match=f"Record 1 lacks '{names[0]}'"):
        case.predictor.predict(Batch(records=missing))
    unknown = [{**records[0], "colour": 1.0}]
    with pytest.raises(InvalidInput, match="Record 1 has unknown 'colour'"):
        case.predictor.predict(Batch(records=unknown))
