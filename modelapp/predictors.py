"""The inference core: predictor kinds, each owning how its models load and predict.

A predictor kind is a ``BasePredictor`` subclass: ``handles(model_dir)`` says whether it
serves a model directory, ``from_model_dir()`` loads it, ``invoke()`` answers one request
(the view calls it once; plain Python, so a test or a benchmark calls it without HTTP).
``SMSERVE['PREDICTORS']`` lists the kinds; the registry uses the first that handles a
directory. A kind that parses the raw body itself (a user's ``input_fn``) sets
``owns_input``; one that renders its own response sets ``owns_output``: the negotiation
then accepts any Content-Type or Accept for it instead of answering 415/406.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelapp.batch import Batch, NotANumber, RecordTable, to_float_rows
from modelapp.exceptions import InvalidInput
from modelapp.metadata import ModelMetadata
from modelapp.tables import Table

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
ARTIFACT_SUFFIXES = (".joblib", ".pkl", ".pickle")


class ModelLoadError(Exception):
    """Why a model directory cannot be served; the message is what /ping and the logs
    say."""


@dataclass
class InvocationResult:
    """What one invocation produced: ``predictions`` for the negotiated renderer, or, from
    a predictor that owns its output, the response ``body`` and its ``content_type``."""

    method: str
    records: int
    predictions: Any = None
    body: bytes | None = None
    content_type: str | None = None
    # Response headers the predictor sets (a script's custom attributes), and the status
    # of an owned body.
    headers: dict[str, str] | None = None
    status: int = 200


class BasePredictor:
    """Wraps one loaded model.

    Subclasses implement ``from_model_dir`` (and ``handles`` when they serve only some
    directories), set ``methods`` (the prediction methods a request may ask for, the first
    being the default) and may refine ``available_methods``, ``call`` and ``invoke``.
    ``n_features`` and ``feature_names`` come from the model, else from its
    ``metadata.json``.
    """

    methods: tuple[str, ...] = ("predict",)
    # The raw body and Content-Type go to invoke() (no parser, no 415).
    owns_input: bool = False
    # invoke() returns the response body itself (no renderer, no 406).
    owns_output: bool = False
    # invoke() is also given the request's headers (``headers=``).
    wants_headers: bool = False
    # An owned output with Accept absent or */*: the request's own type (else JSON).
    accept_follows_content_type: bool = True

    @classmethod
    def handles(cls, model_dir: Path) -> bool:
        """Whether this kind serves ``model_dir``; the registry asks each kind in turn."""
        return True

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, metadata: ModelMetadata | None
    ) -> BasePredictor:
        """Load the model in ``model_dir``; ``ModelLoadError`` says why it cannot be."""
        raise NotImplementedError(".from_model_dir() must be overridden.")

    def __init__(
        self,
        model: Any,
        metadata: ModelMetadata | None = None,
        artifact: Path | None = None,
    ) -> None:
        self.model = model
        # None: no metadata.json came with the model.
        self.metadata = metadata
        # The file the model was loaded from (its checksum identifies the model).
        self.artifact = artifact
        self.n_features: int | None = self._n_features()
        names = self._feature_names()
        self.feature_names: list[str] | None = (
            list(names) if names is not None else None
        )
        self.allows_nan: bool = self._allows_nan()
        # The input schema: the record to frame conversion, the warm-up record, and the
        # error messages that name a feature.
        self.table = Table.for_model(
            model, metadata, self.n_features, self.feature_names
        )
        self.available_methods: tuple[str, ...] = tuple(
            m for m in self.methods if callable(getattr(model, m, None))
        )

    @property
    def default_method(self) -> str:
        return self.methods[0]

    def describe_estimator(self, estimator: str) -> str:
        """What the admin and the stats call the model whose estimator is ``estimator``."""
        return estimator

    def _n_features(self) -> int | None:
        value = getattr(self.model, "n_features_in_", None)
        if not value and self.metadata is not None:
            value = self.metadata.n_features
        return int(value) if value else None

    def _feature_names(self) -> Any:
        names = getattr(self.model, "feature_names_in_", None)
        if names is None and self.metadata is not None:
            names = self.metadata.feature_names
        return names

    def _allows_nan(self) -> bool:
        return False

    # --- the batch, checked against the model ---
    def to_input(self, batch: Batch) -> Any:
        """What the model's method takes: a float matrix, or for a model with text
        columns a DataFrame with the training-time columns and types (``tables.py``)."""
        if self.table.is_frame:
            return self.table.to_frame(self._rows(batch))
        try:
            return self.to_matrix(batch)
        except NotANumber:
            if not self.table.takes_text:
                raise
            return self.table.to_frame(self._rows(batch))

    def to_matrix(self, batch: Batch) -> np.ndarray:
        """The batch as a 2-D float array in the model's feature order, or ``InvalidInput``."""
        if batch.values is None:
            # Fields before width, as a float batch is read: a stray quote that merged
            # two fields is named as the text it made, not as a missing feature.
            matrix = to_float_rows(
                self._rows(batch, check_width=False),
                "a record for this model",
                self.feature_names,
            )
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

    def _rows(self, batch: Batch, check_width: bool = True) -> Any:
        """The batch's fields in the model's feature order: lists of cells, or a 2-D
        array for a float batch."""
        if batch.records is not None:
            return self._records_to_rows(batch.records)
        if batch.values is not None:
            if batch.flat:
                matrix = self._flat_to_matrix(batch.values)
            elif batch.columns is not None and self.feature_names is not None:
                matrix = self._reorder(batch.values, batch.columns)
            else:
                matrix = batch.values
            if self.n_features is not None and matrix.shape[1] != self.n_features:
                raise InvalidInput(
                    f"Expected {self.n_features} features per record, got "
                    f"{matrix.shape[1]}."
                )
            return matrix
        rows = batch.rows
        if batch.flat:
            items = rows[0]
            if self.n_features == 1 and len(items) != 1:
                rows = [[item] for item in items]
            elif self.n_features not in (None, len(items)):
                raise InvalidInput(
                    f"Expected {self.n_features} features per record, got a flat list "
                    f"of {len(items)} values; send a list of records ([[...], ...]) or "
                    "one record."
                )
        if batch.columns is not None and self.feature_names is not None:
            order = self._order(batch.columns)
            rows = [[row[i] for i in order] for row in rows]
        if (
            check_width
            and self.n_features is not None
            and len(rows[0]) != self.n_features
        ):
            raise InvalidInput(
                f"Expected {self.n_features} features per record, got {len(rows[0])}."
            )
        return rows

    def _flat_to_matrix(self, values: np.ndarray) -> np.ndarray:
        if self.n_features in (None, len(values)):
            return values.reshape(1, -1)
        if self.n_features == 1:
            return values.reshape(-1, 1)
        raise InvalidInput(
            f"Expected {self.n_features} features per record, got a flat list of "
            f"{len(values)} values; send a list of records ([[...], ...]) or one record."
        )

    def _records_to_rows(self, records: Any) -> Any:
        names = self.feature_names
        if names is None:
            raise InvalidInput(
                "Records were sent as objects, but the model was trained without feature "
                f"names: send each record as an array of {self.n_features or 'its'} numbers."
            )
        if isinstance(records, RecordTable):
            return records.in_order(names)
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
        return [[record[name] for name in names] for record in records]

    def _order(self, columns: list[str]) -> list[int]:
        names = self.feature_names
        if sorted(columns) != sorted(names):
            raise InvalidInput(
                f"The CSV header names {', '.join(columns)}; expected the features "
                f"{', '.join(names)}."
            )
        return [columns.index(name) for name in names]

    def _reorder(self, matrix: np.ndarray, columns: list[str]) -> np.ndarray:
        if columns == self.feature_names:
            return matrix
        return matrix[:, self._order(columns)]

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

    def call(self, method: str, matrix: Any) -> np.ndarray:
        """Run ``method`` on a checked matrix (or frame); override to adapt other model
        libraries."""
        return np.asarray(getattr(self.model, method)(matrix))

    def invoke(
        self, data: Any, attributes: dict[str, str], media_type: str, accept: str
    ) -> InvocationResult:
        """Answer one request: ``data`` is the parsed ``Batch`` (the raw body when the
        kind owns its input), ``attributes`` the request's custom attributes,
        ``media_type`` its Content-Type and ``accept`` the negotiated response type."""
        method = attributes.get("method") or self.default_method
        predictions = self.predict(data, method)
        return InvocationResult(
            method=method, records=len(data), predictions=predictions
        )

    def predict(self, batch: Batch, method: str | None = None) -> np.ndarray:
        """One prediction per record of ``batch``, in order."""
        method = self.check_method(method or self.default_method)
        matrix = self.to_input(batch)
        try:
            result = self.call(method, matrix)
        except ValueError as exc:
            # The model's own input validation (e.g. an unknown category): the request's
            # fault. Which record, and which of its fields, is what the caller needs.
            record = self._first_rejected(method, matrix)
            raise InvalidInput(
                self.table.rejection(matrix, record, exc)
                if record is not None
                else f"The model rejected the input: {exc}"
            ) from exc
        if len(result) != len(matrix):
            raise RuntimeError(
                f"{type(self.model).__name__}.{method} returned {len(result)} results for "
                f"{len(matrix)} records"
            )
        return result

    def after_fork(self) -> None:
        """Remake what one process may not share with another (gunicorn's
        ``post_fork``); nothing by default."""

    def _first_rejected(self, method: str, matrix: Any) -> int | None:
        """The first record the model rejects on its own, found by halving the batch
        (a few calls, on the error path only); None when no single record fails."""
        take = matrix.iloc if hasattr(matrix, "iloc") else matrix
        lo, hi = 0, len(matrix)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                self.call(method, take[lo:mid])
            except ValueError:
                hi = mid
            else:
                lo = mid
        if hi - lo != 1:
            return None
        try:
            self.call(method, take[lo:hi])
        except ValueError:
            return lo
        return None

    def warm_up(self) -> None:
        """Predict once on a record built from the schema (known categories, typical
        numbers): proves the model works on what a request will bring."""
        record = self.table.typical_record()
        if record is None:
            logger.warning(
                "The model does not say how many features it takes: no warm-up."
            )
            return
        self.call(self.default_method, self.to_input(Batch(rows=[record])))


class SklearnPredictor(BasePredictor):
    """Any scikit-learn estimator or pipeline (anything with ``predict``), saved with
    joblib or pickle: ``model.joblib`` (with ``metadata.json``), else the one
    ``*.joblib``/``*.pkl`` file of the directory."""

    methods = ("predict", "predict_proba", "predict_log_proba", "decision_function")

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, metadata: ModelMetadata | None
    ) -> SklearnPredictor:
        artifact = find_artifact(model_dir)
        if artifact.name != MODEL_FILE:
            metadata = None  # metadata.json describes model.joblib, not another file
        model = load_pickle(artifact)
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(
                f"{artifact.name} holds a {type(model).__name__}, which has no predict "
                "method."
            )
        predictor = cls(model, metadata, artifact)
        predictor.compile(model_dir)
        return predictor

    def __init__(
        self,
        model: Any,
        metadata: ModelMetadata | None = None,
        artifact: Path | None = None,
    ) -> None:
        super().__init__(model, metadata, artifact)
        # Methods ONNX Runtime serves, set by compile(); none until then.
        self._compiled: dict[str, Any] = {}
        self.engine_report: Any = None
        self._frame = None
        if self.feature_names is not None and hasattr(self.model, "feature_names_in_"):
            # Fitted on a DataFrame: keep handing it one, or scikit-learn warns every call.
            import pandas

            self._frame = pandas.DataFrame
        # scikit-learn's trees document ``check_input=False`` to skip their per-call input
        # validation, most of a one-record tree prediction (``smserve/fastpaths.py``,
        # ``tree_check_input``). to_matrix has done that work: width, feature order,
        # NaN/infinity against the model's tags; what is left is the float32 conversion
        # (_as_float32).
        from modelapp import conf

        self._unchecked_methods = frozenset(
            method
            for method in self.available_methods
            if conf.fast_path("tree_check_input")
            and self._frame is None
            and _is_tree(model)
            and _takes_check_input(getattr(model, method))
        )

    def compile(self, model_dir: Path | None) -> None:
        """Let ONNX Runtime serve the methods it answers exactly as scikit-learn does
        (``engines.py``); the others, and every method when it is off, stay here."""
        from modelapp import conf, engines

        if not conf.get("COMPILED_ENGINE"):
            self.engine_report = engines.EngineReport(
                methods={m: engines.SKLEARN for m in self.available_methods},
                reason="off (SMSERVE_COMPILED_ENGINE)",
            )
            logger.info(
                "Engines for %s: every method by scikit-learn (%s).",
                type(self.model).__name__,
                self.engine_report.reason,
            )
            return
        kinds = (
            [f.kind for f in self.metadata.features]
            if self.metadata is not None and self.metadata.features
            else None
        )
        self._compiled, self.engine_report = engines.compile_model(
            self.model,
            model_dir,
            self.n_features,
            self.available_methods,
            self.allows_nan,
            self.metadata,
            kinds,
            fallback=self._sklearn_call,
        )

    def warm_up(self) -> None:
        """scikit-learn's own warm-up: the compiled engine was verified in a child
        process, and ONNX Runtime must not load in gunicorn's master (``engines.py``)."""
        compiled, self._compiled = self._compiled, {}
        try:
            super().warm_up()
        finally:
            self._compiled = compiled

    def _sessions(self) -> set[Any]:
        return {method.__self__.session for method in self._compiled.values()}

    def after_fork(self) -> None:
        """Each worker makes its own ONNX Runtime sessions (``engines.py``)."""
        for session in self._sessions():
            session.after_fork()

    def _allows_nan(self) -> bool:
        return allows_nan(self.model)

    def call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        compiled = self._compiled.get(method)
        if compiled is not None:
            return compiled(matrix)
        return self._sklearn_call(method, matrix)

    def _sklearn_call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        if method in self._unchecked_methods:
            return np.asarray(
                getattr(self.model, method)(_as_float32(matrix), check_input=False)
            )
        if not isinstance(matrix, np.ndarray):
            # A table (tables.py): its encoders and imputers check their own columns,
            # and config_context would cost a 1-record request ~0.3 ms (bench/tables.py).
            return np.asarray(getattr(self.model, method)(matrix))
        if self._frame is not None:
            matrix = self._frame(matrix, columns=self.feature_names, copy=False)
        # to_matrix has checked NaN/infinity against the model's tags already:
        # scikit-learn need not scan the batch again. (Imported here: scikit-learn
        # loads with the model, not with every management command.)
        from sklearn import config_context

        with config_context(assume_finite=True):
            return np.asarray(getattr(self.model, method)(matrix))


def find_artifact(model_dir: Path) -> Path:
    """``model.joblib``, else the one ``*.joblib``/``*.pkl`` in the model dir."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"The model directory {model_dir} does not exist.")
    names = sorted(p.name for p in model_dir.iterdir())
    logger.info(
        "Model directory %s holds: %s", model_dir, ", ".join(names) or "nothing"
    )
    if (model_dir / MODEL_FILE).is_file():
        return model_dir / MODEL_FILE
    candidates = [model_dir / n for n in names if n.endswith(ARTIFACT_SUFFIXES)]
    candidates = [p for p in candidates if p.is_file()]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ModelLoadError(
            f"The model directory {model_dir} holds several artifacts "
            f"({', '.join(p.name for p in candidates)}): name the one to serve "
            f"{MODEL_FILE}."
        )
    hint = ""
    if "model.tar.gz" in names:
        hint = " It holds model.tar.gz: unpack it there (SageMaker does this itself)."
    raise ModelLoadError(
        f"No model artifact in {model_dir} (found: {', '.join(names) or 'nothing'}); "
        f"expected {MODEL_FILE} or a single *.joblib/*.pkl file.{hint}"
    )


def load_pickle(artifact: Path) -> Any:
    """``joblib.load``, which runs code from the file: the artifact is trusted input by
    contract. Warnings (e.g. ``InconsistentVersionWarning``) are logged, never silenced."""
    import joblib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = joblib.load(artifact)
        except Exception as exc:  # any failure to unpickle is a broken artifact
            logger.exception("Could not load %s.", artifact)
            raise ModelLoadError(
                f"Could not load {artifact.name}: {type(exc).__name__}: {exc}"
            ) from exc
    for warning in caught:
        logger.warning(
            "Loading %s: %s: %s",
            artifact.name,
            warning.category.__name__,
            warning.message,
        )
    return model


def allows_nan(estimator: Any) -> bool:
    """Whether ``estimator`` takes missing values (NaN). A pipeline does when an imputer
    comes before any step that cannot (scikit-learn tags every pipeline as refusing
    them)."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        for _, step in steps:
            if step is None or step == "passthrough":
                continue
            if type(step).__module__.startswith("sklearn.impute"):
                return True
            if not allows_nan(step):
                return False
        return True
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


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
