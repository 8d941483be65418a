"""The estimator a job trains: short names, dotted paths, pipelines, ``set_params``.

``smserve_estimator`` is a short name (``random_forest``), a dotted path to an estimator class
or to a function returning an estimator (``sklearn.svm.SVC``, ``mypackage.make_model``), or a
JSON list of those, which becomes ``sklearn.pipeline.make_pipeline(...)`` (steps named after
their class in lower case, so ``logisticregression__C`` reaches a step's parameter).
Every other hyperparameter goes through ``set_params``: scikit-learn validates it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils.module_loading import import_string

from modelapp.metadata import dotted_path
from modelapp.training.errors import ClientError

logger = logging.getLogger(__name__)

SHORT_NAMES = {
    "decision_tree": "sklearn.tree.DecisionTreeClassifier",
    "decision_tree_regressor": "sklearn.tree.DecisionTreeRegressor",
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "random_forest_regressor": "sklearn.ensemble.RandomForestRegressor",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "extra_trees_regressor": "sklearn.ensemble.ExtraTreesRegressor",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingClassifier",
    "gradient_boosting_regressor": "sklearn.ensemble.GradientBoostingRegressor",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "hist_gradient_boosting_regressor": "sklearn.ensemble.HistGradientBoostingRegressor",
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "linear_regression": "sklearn.linear_model.LinearRegression",
    "ridge": "sklearn.linear_model.Ridge",
    "lasso": "sklearn.linear_model.Lasso",
    "svc": "sklearn.svm.SVC",
    "svr": "sklearn.svm.SVR",
    "knn": "sklearn.neighbors.KNeighborsClassifier",
    "knn_regressor": "sklearn.neighbors.KNeighborsRegressor",
    "naive_bayes": "sklearn.naive_bayes.GaussianNB",
    "mlp": "sklearn.neural_network.MLPClassifier",
    "mlp_regressor": "sklearn.neural_network.MLPRegressor",
    "standard_scaler": "sklearn.preprocessing.StandardScaler",
    "min_max_scaler": "sklearn.preprocessing.MinMaxScaler",
    "pca": "sklearn.decomposition.PCA",
}


def resolve(name: str) -> Any:
    """A short name or dotted path -> a new, unfitted estimator."""
    if not isinstance(name, str) or not name.strip():
        raise ClientError(
            f"Unknown estimator {name!r}: give a dotted path such as "
            "sklearn.ensemble.RandomForestClassifier, a JSON list of them for a "
            f"pipeline, or one of the short names {', '.join(sorted(SHORT_NAMES))}."
        )
    path = SHORT_NAMES.get(name.strip(), name.strip())
    try:
        target = import_string(path)
    except ImportError as exc:
        raise ClientError(
            f"Unknown estimator {name!r}: {exc}. Give a dotted path such as "
            "sklearn.ensemble.RandomForestClassifier, or one of the short names "
            f"{', '.join(sorted(SHORT_NAMES))}."
        ) from exc
    try:
        estimator = target()
    except TypeError as exc:
        raise ClientError(
            f"Estimator {name!r} cannot be created without arguments: {exc}."
        ) from exc
    if not (
        callable(getattr(estimator, "fit", None))
        and callable(getattr(estimator, "get_params", None))
    ):
        raise ClientError(
            f"Estimator {name!r} resolves to {dotted_path(estimator)}, which is not a "
            "scikit-learn estimator (it needs fit, get_params and set_params)."
        )
    return estimator


def build(spec: Any) -> Any:
    """The estimator ``smserve_estimator`` describes: one, or a pipeline of several."""
    if isinstance(spec, list):
        if not spec:
            raise ClientError(
                "Hyperparameter smserve_estimator is an empty list: list the pipeline's "
                'steps, e.g. ["standard_scaler", "logistic_regression"].'
            )
        from sklearn.pipeline import make_pipeline

        try:
            return make_pipeline(*(resolve(step) for step in spec))
        except (TypeError, ValueError) as exc:
            raise ClientError(f"Cannot build a pipeline from {spec!r}: {exc}") from exc
    return resolve(spec)


def configure(
    estimator: Any, params: dict[str, Any], random_seed: int | None = None
) -> Any:
    """Apply hyperparameters with ``set_params``; an unknown name fails with the valid ones.

    ``random_seed`` fills every ``random_state`` parameter (nested ones too) that the
    hyperparameters leave unset.
    """
    params = dict(params)
    if random_seed is not None:
        for key in estimator.get_params(deep=True):
            if (key == "random_state" or key.endswith("__random_state")) and (
                key not in params
            ):
                params[key] = random_seed
    # One at a time, so the message names the parameter that is wrong; nested
    # (step__param) names after the plain ones, as a pipeline's own steps may be replaced.
    for key in sorted(params, key=lambda k: (k.count("__"), k)):
        try:
            estimator.set_params(**{key: params[key]})
        except (ValueError, TypeError, AttributeError) as exc:
            sklearn_says = " ".join(
                str(exc).split()
            )  # the estimator's repr spans lines
            raise ClientError(
                f"Unknown hyperparameter {key!r} for {type(estimator).__name__}. "
                f"scikit-learn says: {sklearn_says}{nested_parameters(estimator)}"
            ) from exc
    return estimator


def valid_parameters(estimator: Any) -> str:
    """The hint a parameter error ends with: every name ``set_params`` accepts."""
    names = sorted(estimator.get_params(deep=True))
    return f"Valid parameters of {type(estimator).__name__}: {', '.join(names)}."


def nested_parameters(estimator: Any) -> str:
    """The nested (``step__param``) names, which scikit-learn's own message leaves out."""
    if set(estimator.get_params(deep=True)) == set(estimator.get_params(deep=False)):
        return ""
    return " " + valid_parameters(estimator)


def task_of(estimator: Any) -> str | None:
    """``classification``, ``regression``, or None for anything else (a clusterer)."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    return None
