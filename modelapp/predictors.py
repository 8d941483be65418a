"""The inference core: a loaded model, the batch checks that need it, and the prediction.

``BasePredictor`` is plain Python: a test (or a benchmark) calls it without HTTP.
``SMSERVE['PREDICTOR']`` names the class the registry wraps each loaded model in.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np

from modelapp.exceptions import InvalidInput
from modelapp.parsers import Batch, to_float_rows

logger = logging.getLogger(__name__)


class BasePredictor:
    """Wraps one loaded model.

    Subclasses set ``methods`` (the prediction methods a request may ask for, the first being
    the default) and may refine ``available_methods`` and ``call``. ``n_features`` and
    ``feature_names`` come from the model, else from its ``metadata.json``.
    """

    methods: tuple[str, ...] = ("predict",)

    def __init__(self, model: Any, metadata: dict[str, Any] | None = None) -> None:
        self.model = model
        self.metadata = metadata or {}
        self.n_features: int | None = self._n_features()
        names = self._feature_names()
        self.feature_names: list[str] | None = (
            list(names) if names is not None else None
        )
        self.allows_nan: bool = self._allows_nan()
        self.available_methods: tuple[str, ...] = tuple(
            m for m in self.methods if callable(getattr(model, m, None))
        )

    @property
    def default_method(self) -> str:
        return self.methods[0]

    def _n_features(self) -> int | None:
        value = getattr(self.model, "n_features_in_", None) or self.metadata.get(
            "n_features"
        )
        return int(value) if value else None

    def _feature_names(self) -> Any:
        names = getattr(self.model, "feature_names_in_", None)
        return names if names is not None else self.metadata.get("feature_names")

    def _allows_nan(self) -> bool:
        return False

    # --- the batch, checked against the model ---
    def to_matrix(self, batch: Batch) -> np.ndarray:
        """The batch as a 2-D float array in the model's feature order, or ``InvalidInput``."""
        if batch.records is not None:
            matrix = self._records_to_matrix(batch.records)
        elif batch.flat:
            matrix = self._flat_to_matrix(batch.values)
        else:
            matrix = batch.values
            if batch.columns is not None and self.feature_names is not None:
                matrix = self._reorder(matrix, batch.columns)
        width = matrix.shape[1]
        if self.n_features is not None and width != self.n_features:
            raise InvalidInput(
                f"Expected {self.n_features} features per record, got {width}."
            )
        self._check_finite(matrix)
        return matrix

    def _flat_to_matrix(self, values: np.ndarray) -> np.ndarray:
        if self.n_features in (None, len(values)):
            return values.reshape(1, -1)
        if self.n_features == 1:
            return values.reshape(-1, 1)
        raise InvalidInput(
            f"Expected {self.n_features} features per record, got a flat list of "
            f"{len(values)} values; send a list of records ([[...], ...]) or one record."
        )

    def _records_to_matrix(self, records: list[dict[str, Any]]) -> np.ndarray:
        names = self.feature_names
        if names is None:
            raise InvalidInput(
                "Records were sent as objects, but the model was trained without feature "
                f"names: send each record as an array of {self.n_features or 'its'} numbers."
            )
        expected = set(names)
        for number, record in enumerate(records, 1):
            if record.keys() != expected:
                missing = [n for n in names if n not in record]
                unknown = sorted(set(record) - expected)
                parts = []
                if missing:
                    parts.append(f"lacks {', '.join(map(repr, missing))}")
                if unknown:
                    parts.append(f"has unknown {', '.join(map(repr, unknown))}")
                raise InvalidInput(
                    f"Record {number} {' and '.join(parts)}; expected the features "
                    f"{', '.join(names)}."
                )
        rows = [[record[name] for name in names] for record in records]
        return to_float_rows(rows, "a JSON record")

    def _reorder(self, matrix: np.ndarray, columns: list[str]) -> np.ndarray:
        names = self.feature_names
        if columns == names:
            return matrix
        if sorted(columns) != sorted(names):
            raise InvalidInput(
                f"The CSV header names {', '.join(columns)}; expected the features "
                f"{', '.join(names)}."
            )
        return matrix[:, [columns.index(name) for name in names]]

    def _check_finite(self, matrix: np.ndarray) -> None:
        if matrix.dtype.kind != "f":
            return
        finite = np.isfinite(matrix)
        if finite.all():
            return
        bad = ~finite if not self.allows_nan else np.isinf(matrix)
        if not bad.any():
            return
        record, feature = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInput(
            f"Record {record + 1}, feature {feature + 1} is {matrix[record, feature]}: "
            + (
                "this model accepts missing values (NaN) but not infinity."
                if self.allows_nan
                else "this model does not accept missing (NaN) or infinite values."
            )
        )

    # --- prediction ---
    def check_method(self, method: str) -> str:
        if method not in self.available_methods:
            raise InvalidInput(
                f"Unknown method {method!r}; this model supports: "
                f"{', '.join(self.available_methods)}.",
                code="unknown_method",
            )
        return method

    def call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        """Run ``method`` on a checked matrix; override to adapt other model libraries."""
        return np.asarray(getattr(self.model, method)(matrix))

    def predict(self, batch: Batch, method: str | None = None) -> np.ndarray:
        """One prediction per record of ``batch``, in order."""
        method = self.check_method(method or self.default_method)
        matrix = self.to_matrix(batch)
        try:
            result = self.call(method, matrix)
        except ValueError as exc:
            # The model's own input validation (e.g. an unknown category): the request's fault.
            raise InvalidInput(f"The model rejected the input: {exc}") from exc
        if len(result) != len(matrix):
            raise RuntimeError(
                f"{type(self.model).__name__}.{method} returned {len(result)} results for "
                f"{len(matrix)} records"
            )
        return result

    def warm_up(self) -> None:
        """Predict once on a record of zeros of the right width: proves the model works."""
        if self.n_features is None:
            logger.warning(
                "The model does not say how many features it takes: no warm-up."
            )
            return
        self.call(
            self.default_method,
            self.to_matrix(Batch(values=np.zeros((1, self.n_features)))),
        )


class SklearnPredictor(BasePredictor):
    """Any scikit-learn estimator or pipeline (anything with ``predict``)."""

    methods = ("predict", "predict_proba", "predict_log_proba", "decision_function")

    def __init__(self, model: Any, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(model, metadata)
        self._frame = None
        if self.feature_names is not None and hasattr(self.model, "feature_names_in_"):
            # Fitted on a DataFrame: keep handing it one, or scikit-learn warns every call.
            import pandas

            self._frame = pandas.DataFrame
        # scikit-learn's trees document ``check_input=False`` to skip their per-call input
        # validation (~70 us, most of a one-record tree prediction). to_matrix has done
        # that work: width, feature order, NaN/infinity against the model's tags; what
        # is left is the float32 conversion (_as_float32).
        self._unchecked_methods = frozenset(
            method
            for method in self.available_methods
            if self._frame is None
            and _is_tree(model)
            and _takes_check_input(getattr(model, method))
        )

    def _allows_nan(self) -> bool:
        try:
            from sklearn.utils import get_tags

            return bool(get_tags(self.model).input_tags.allow_nan)
        except (ImportError, AttributeError, TypeError, ValueError):
            return False

    def call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        if method in self._unchecked_methods:
            return np.asarray(
                getattr(self.model, method)(_as_float32(matrix), check_input=False)
            )
        if self._frame is not None:
            matrix = self._frame(matrix, columns=self.feature_names, copy=False)
        # to_matrix has checked NaN/infinity against the model's tags already:
        # scikit-learn need not scan the batch again. (Imported here: scikit-learn
        # loads with the model, not with every management command.)
        from sklearn import config_context

        with config_context(assume_finite=True):
            return np.asarray(getattr(self.model, method)(matrix))


def _is_tree(model: Any) -> bool:
    from sklearn.tree import BaseDecisionTree

    return isinstance(model, BaseDecisionTree)


def _takes_check_input(method: Any) -> bool:
    try:
        return "check_input" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _as_float32(matrix: np.ndarray) -> np.ndarray:
    """The C-ordered float32 array a tree's own validation would have made; a value too
    large for float32 is the request's fault, as scikit-learn's check would say."""
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(matrix, dtype=np.float32)
    # to_matrix let no infinity through: one here is a value float32 cannot hold.
    if matrix.dtype != np.float32 and np.isinf(converted).any():
        overflow = np.isinf(converted) & np.isfinite(matrix)
        if overflow.any():
            record, feature = (int(i) for i in np.argwhere(overflow)[0])
            raise InvalidInput(
                f"Record {record + 1}, feature {feature + 1} is {matrix[record, feature]}: "
                "too large for this model, which computes in float32."
            )
    return converted
