"""How a table's columns reach the estimator: categorical encoding and imputation.

The saved model is one scikit-learn pipeline that takes the raw table (the columns as
``channels.py`` read them: numbers as float64, categories as text), so serving needs no
code of ours to use it. ``prepare`` puts a ``ColumnTransformer`` in front of the chosen
estimator when the table needs it; a table of numbers without gaps gets the bare
estimator, as before.

``smserve_categorical_encoding`` (``auto`` by default):

- ``onehot``: ``OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
  max_categories=50)``: categories seen fewer than 5 times share one column, and so does
  a category first seen at serving time (all zeros when none was rare). The default for
  linear models, SVMs, kNN, naive Bayes and MLPs, which need one column per category.
- ``ordinal``: ``OrdinalEncoder`` with unknown and missing categories as NaN (``-1`` for
  an estimator that cannot take NaN). The default for trees and tree ensembles: as
  accurate as one-hot on the churn table we measured (docs/training.md), with fewer columns.
- ``native``: ``HistGradientBoosting*`` only, and their default: an ordinal code per
  category (at most ``max_bins``) handed to the estimator's own categorical support
  (``categorical_features``); an unknown category is a missing value.
- ``none``: the columns reach the estimator as they are, for an estimator (or a
  pipeline of the user's, e.g. one starting with a ``ColumnTransformer``, which ``auto``
  recognises) that encodes them itself.

``smserve_impute`` (``auto``): numeric gaps are filled (``median``, ``mean`` or
``most_frequent``) only for an estimator that cannot take NaN; ``none`` never fills.
A missing category is a category of its own for one-hot, NaN for the ordinal codes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from modelapp.metadata import CATEGORICAL, Feature, allows_nan
from modelapp.training.environment import CATEGORICAL_ENCODING
from modelapp.training.errors import ClientError

logger = logging.getLogger(__name__)

MIN_FREQUENCY = 5
MAX_ONEHOT_CATEGORIES = 50


def prepare(
    estimator: Any,
    features: list[Feature],
    named: bool,
    has_missing: bool,
    encoding: str = "auto",
    impute: str = "auto",
) -> tuple[Any, dict[str, Any]]:
    """The estimator to fit on the table, and what was chosen (for ``metadata.json``)."""
    from sklearn.pipeline import Pipeline

    categorical = [i for i, f in enumerate(features) if f.kind == CATEGORICAL]
    numeric = [i for i, f in enumerate(features) if f.kind != CATEGORICAL]
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else None
    final = steps[-1][1] if steps else estimator
    first = steps[0][1] if steps else estimator
    if encoding == "auto":
        encoding = _auto_encoding(first, final)
    if impute == "auto":
        impute = "none" if allows_nan(estimator) else "median"
    chosen = {"encoding": encoding if categorical else None, "impute": impute}
    if not categorical and (impute == "none" or not has_missing):
        return estimator, {}
    if categorical and encoding == "none":
        return estimator, chosen
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer

    def label(i: int) -> Any:
        return features[i].name if named else i

    numbers = SimpleImputer(strategy=impute) if impute != "none" else "passthrough"
    if not categorical:
        prefix = [("simpleimputer", numbers)]
    else:
        encoder = _encoder(encoding, final, allows_nan(final), len(categorical))
        transformer = ColumnTransformer(
            [
                ("categorical", encoder, [label(i) for i in categorical]),
                ("numeric", numbers, [label(i) for i in numeric]),
            ],
            sparse_threshold=0,
            verbose_feature_names_out=False,
        )
        prefix = [("columntransformer", transformer)]
    if steps is None:
        steps = [(type(estimator).__name__.lower(), estimator)]
    logger.info(
        "Table preprocessing: %d categorical column(s) %s-encoded, numeric gaps %s.",
        len(categorical),
        encoding,
        "left to the estimator" if impute == "none" else f"filled ({impute})",
    )
    return Pipeline(prefix + steps), chosen


def _auto_encoding(first: Any, final: Any) -> str:
    if hasattr(first, "transformers"):  # the user's own ColumnTransformer
        return "none"
    if _is_hist_gradient_boosting(final):
        return "native"
    if _is_tree_model(final):
        return "ordinal"
    return "onehot"


def _is_hist_gradient_boosting(estimator: Any) -> bool:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    return isinstance(
        estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor
    )


def _is_tree_model(estimator: Any) -> bool:
    """A decision tree, a forest of them (random, extra) or gradient boosting."""
    from sklearn.tree import BaseDecisionTree

    return isinstance(estimator, BaseDecisionTree) or type(estimator).__module__ in (
        "sklearn.ensemble._forest",
        "sklearn.ensemble._gb",
    )


def _encoder(encoding: str, final: Any, takes_nan: bool, n_categorical: int) -> Any:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if encoding == "onehot":
        return OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            min_frequency=MIN_FREQUENCY,
            max_categories=MAX_ONEHOT_CATEGORIES,
            sparse_output=False,
        )
    if encoding == "native":
        if not _is_hist_gradient_boosting(final):
            raise ClientError(
                f"Hyperparameter {CATEGORICAL_ENCODING}=native needs a "
                "HistGradientBoosting estimator (their own categorical support); "
                f"{type(final).__name__} takes onehot or ordinal."
            )
        # The ordinal codes come first in the transformer's output.
        final.set_params(categorical_features=list(range(n_categorical)))
        return OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=final.max_bins,
        )
    code = np.nan if takes_nan else -1
    return OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=code,
        encoded_missing_value=code,
    )
