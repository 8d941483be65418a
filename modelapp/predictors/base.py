"""The base of every predictor kind, and what the kinds share.

A predictor kind is a ``BasePredictor`` subclass, one module of this package:
``handles(model_dir)`` says whether it serves a model directory, ``from_model_dir()`` loads
it, ``invoke()`` answers one request (the view calls it once; plain Python, so a test or a
benchmark calls it without HTTP). ``SMSERVE['PREDICTORS']`` lists the kinds; the registry
uses the first that handles a directory. A kind that parses the raw body itself (a user's
``input_fn``) sets ``owns_input``; one that renders its own response sets ``owns_output``:
the negotiation then accepts any Content-Type or Accept for it instead of answering
415/406.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelapp import conf, formats
from modelapp.batch import (
    Batch,
    ChunkedPredictions,
    Declined,
    NotANumber,
    RecordTable,
    renumbered,
    to_float_rows,
)
from modelapp.exceptions import InvalidInput
from modelapp.metadata import ModelMetadata
from modelapp.predictors import featurizer
from modelapp.predictors.schema import InputSchema
from modelapp.text import brief_list

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
# The method that answers with attributions instead of predictions.
EXPLAIN = "explain"
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

    A kind implements ``from_model_dir`` (and ``handles`` when it serves only some
    directories), which must pass ``artifact``: the file that identifies the model (the
    registry checksums it and reports its size). It sets ``methods`` (the prediction
    methods a request may ask for, the first being the default) and may refine:

    - ``call(method, matrix)``: run a method on the checked input (a float matrix, or a
      DataFrame for a model with text columns);
    - ``n_features_of``, ``feature_names_of``, ``allows_nan_of``: what the model says of
      its input (by default scikit-learn's ``n_features_in_``/``feature_names_in_``, else
      ``metadata.json``; no missing values);
    - ``input_errors``: the exceptions of the model's library that mean "this input is
      wrong" (a 400 naming the first rejected record), not a bug (a 500);
    - ``invoke``, ``warm_up``, ``after_fork``, ``describe_estimator``.
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
    # The model's own input validation errors: a 400, not a 500.
    input_errors: tuple[type[Exception], ...] = (ValueError,)
    # Which engine serves each method (the compiled engine's ``EngineReport``); None: the
    # kind's own library serves every method.
    engine_report: Any = None
    # The deployment's output keys checked against this model (``outputs.OutputSpec``);
    # None: answer with the method alone.
    outputs: Any = None
    # The drift sampler (modelapp/capture.py) the registry attaches when capture is on.
    capture: Any = None

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
        # The file the model was loaded from (its checksum identifies the model);
        # required of every kind's from_model_dir (None only for a model built in code).
        self.artifact = artifact
        self.n_features: int | None = self.n_features_of(model)
        names = self.feature_names_of(model)
        self.feature_names: list[str] | None = (
            list(names) if names is not None else None
        )
        self.allows_nan: bool = self.allows_nan_of(model)
        # The input schema: the record to frame conversion, the warm-up record, and the
        # error messages that name a feature.
        self.schema = InputSchema.for_model(
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

    # --- what the model says of its input (override for other libraries) ---
    def n_features_of(self, model: Any) -> int | None:
        """How many features a record has; None when neither the model nor its
        metadata says."""
        value = getattr(model, "n_features_in_", None)
        if not value and self.metadata is not None:
            value = self.metadata.n_features
        return int(value) if value else None

    def feature_names_of(self, model: Any) -> Any:
        """The features' names in the model's order (a sequence), or None."""
        names = getattr(model, "feature_names_in_", None)
        if names is None and self.metadata is not None:
            names = self.metadata.feature_names
        return names

    def allows_nan_of(self, model: Any) -> bool:
        """Whether the model takes missing values (NaN) in a numeric feature."""
        return False

    # --- the batch, checked against the model ---
    def to_input(self, batch: Batch) -> Any:
        """What the model's method takes: a float matrix, or for a model with text
        columns a DataFrame with the training-time columns and types (``schema.py``)."""
        if self.schema.is_frame:
            return self.schema.to_frame(self._checked_width(self._align(batch)))
        try:
            return self.to_matrix(batch)
        except NotANumber:
            if not self.schema.takes_text:
                raise
            return self.schema.to_frame(self._checked_width(self._align(batch)))

    def to_matrix(self, batch: Batch) -> np.ndarray:
        """The batch as a 2-D float array in the model's feature order, or ``InvalidInput``."""
        fields = self._align(batch)
        # Fields before width, as a float batch is read: a stray quote that merged two
        # fields is named as the text it made, not as a missing feature.
        matrix = (
            fields
            if isinstance(fields, np.ndarray) and fields.dtype.kind == "f"
            else to_float_rows(fields, "a record for this model", self.feature_names)
        )
        self._checked_width(matrix)
        self._check_finite(matrix)
        return matrix

    def _align(self, batch: Batch) -> np.ndarray | list[list[Any]]:
        """The batch's fields in the model's feature order, width not yet checked: a 2-D
        float array for a float batch, else rows of fields as sent."""
        fields: np.ndarray | list[list[Any]]
        while batch.chunks is not None:
            batch = batch.chunks.whole()  # a consumer of the whole body at once
        if batch.records is not None:
            return self._records_to_rows(batch.records)
        if batch.values is not None:
            fields = self._unflatten(batch.values) if batch.flat else batch.values
        else:
            rows = batch.rows if batch.rows is not None else []
            fields = self._unflatten(rows[0]) if batch.flat else rows
        names, columns = self.feature_names, batch.columns
        if columns is not None and names is not None and columns != names:
            order = self._order(columns, names)
            if isinstance(fields, np.ndarray):
                return fields[:, order]
            return [[row[i] for i in order] for row in fields]
        return fields

    def _unflatten(self, items: Any) -> Any:
        """A flat list: one record, or one value per record for a one-feature model."""
        one_record = self.n_features in (None, len(items))
        if not one_record and self.n_features != 1:
            raise self._wrong_width(
                f"a flat list of {len(items)} values; send a list of records "
                "([[...], ...]) or one record"
            )
        if isinstance(items, np.ndarray):
            return items.reshape(1, -1) if one_record else items.reshape(-1, 1)
        return [list(items)] if one_record else [[item] for item in items]

    def _checked_width(self, fields: Any) -> Any:
        width = fields.shape[1] if isinstance(fields, np.ndarray) else len(fields[0])
        if self.n_features is not None and width != self.n_features:
            raise self._wrong_width(str(width))
        return fields

    def _wrong_width(self, got: str) -> InvalidInput:
        return InvalidInput(
            f"Expected {self.n_features} features per record, got {got}."
        )

    def _records_to_rows(self, records: Any) -> Any:
        names = self.feature_names
        if names is None:
            raise InvalidInput(
                "Records were sent as objects, but the model was trained without feature "
                f"names: send each record as an array of {self.n_features or 'its'} numbers."
            )
        if isinstance(records, RecordTable):
            if set(records.keys) == set(names):
                return records.in_order(names)
            records = [dict.fromkeys(records.keys)]  # every record's keys: record 1's
        expected = set(names)
        for number, record in enumerate(records, 1):
            if record.keys() != expected:
                missing = [n for n in names if n not in record]
                unknown = sorted(set(record) - expected)
                parts = []
                if missing:
                    parts.append(f"lacks {brief_list(missing)}")
                if unknown:
                    parts.append(f"has unknown {brief_list(unknown)}")
                raise InvalidInput(
                    f"Record {number} {' and '.join(parts)}; expected the features "
                    f"{', '.join(names)}."
                )
        return [[record[name] for name in names] for record in records]

    @staticmethod
    def _order(columns: list[str], names: list[str]) -> list[int]:
        """Where each feature is among the named columns (a CSV header, Parquet's)."""
        if sorted(columns) != sorted(names):
            missing = [n for n in names if n not in columns]
            unknown = [c for c in columns if c not in names]
            parts = [f"lack {brief_list(missing)}"] if missing else []
            parts += [f"have unknown {brief_list(unknown)}"] if unknown else []
            raise InvalidInput(
                f"The columns {brief_list(columns)} "
                f"{' and '.join(parts) or 'name a feature twice'}; expected the "
                f"features {', '.join(names)}."
            )
        return [columns.index(name) for name in names]

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

    def call_batch(self, method: str, matrix: Any, total: int | None) -> np.ndarray:
        """``call`` on a batch that is a chunk of ``total`` records (None: the whole
        body): a kind whose choices depend on the batch's size makes them for the
        whole body, so that a chunked answer is the one-pass answer."""
        return self.call(method, matrix)

    def invoke(
        self, data: Any, attributes: dict[str, str], media_type: str, accept: str
    ) -> InvocationResult:
        """Answer one request: ``data`` is the parsed ``Batch`` (the raw body when the
        kind owns its input), ``attributes`` the request's custom attributes,
        ``media_type`` its Content-Type and ``accept`` the negotiated response type."""
        if self.outputs is not None and "method" not in attributes:
            return self.outputs.invoke(self, data)
        method = attributes.get("method") or self.default_method
        if method == EXPLAIN:
            return self.explain(data, attributes, accept)
        predictions = self.predict(data, method)
        if method == "transform" and formats.canonical(accept) == formats.JSONLINES:
            # The next container's record (featurizer.py); a labelled row stays an
            # array, the layout train reads.
            key = conf.get("JSONLINES_FEATURES_KEY")
            if key and not conf.get("PASS_THROUGH_LABEL"):
                predictions = featurizer.as_feature_records(predictions, key)
        return InvocationResult(
            method=method, records=len(data), predictions=predictions
        )

    def explain(
        self, batch: Batch, attributes: dict[str, str], accept: str
    ) -> InvocationResult:
        """``method=explain``: each record's attributions (``explain.py``); a kind that
        cannot explain its models says so."""
        raise InvalidInput(
            f"{type(self).__name__} does not explain its predictions (method=explain).",
            code="not_explainable",
        )

    def predict(self, batch: Batch, method: str | None = None) -> Any:
        """One prediction per record of ``batch``, in order: an array, or for a chunked
        body (``Batch.chunks``) the ``ChunkedPredictions`` of its chunks."""
        if batch.chunks is not None:
            return self._predict_chunks(batch, method)
        method = self.check_method(method or self.default_method)
        label = None
        if method == "transform" and conf.get("PASS_THROUGH_LABEL"):
            batch, label = featurizer.split_label(batch, self.n_features, self.metadata)
        matrix = self.to_input(batch)
        try:
            result = self.call_batch(method, matrix, batch.total)
        except self.input_errors as exc:
            # The model's own input validation (e.g. an unknown category): the request's
            # fault. Which record, and which of its fields, is what the caller needs.
            record = self._first_rejected(method, matrix)
            raise InvalidInput(
                self.schema.rejection(matrix, record, exc)
                if record is not None
                else f"The model rejected the input: {exc}"
            ) from exc
        if len(result) != len(matrix):
            raise RuntimeError(
                f"{type(self.model).__name__}.{method} returned {len(result)} results for "
                f"{len(matrix)} records"
            )
        if self.capture is not None:
            self.capture.offer(matrix, result, method)
        return result if label is None else featurizer.with_label(label, result)

    def before_fork(self) -> None:
        """In gunicorn's master, before the workers fork: drop what a fork cannot copy
        (gunicorn's ``when_ready``); nothing by default."""

    def _predict_chunks(self, batch: Batch, method: str | None) -> Any:
        """A chunked body, a chunk at a time, answering what one pass would: after an
        error the chunks are still read, because a later one that only the general
        parser reads makes the whole body its (one pass parses before it predicts);
        then the first error, its record numbered in the whole body."""
        assert batch.chunks is not None
        predictions = ChunkedPredictions()
        error: InvalidInput | None = None
        try:
            for chunk in batch.chunks:
                if error is not None:
                    continue
                try:
                    predictions.append(self.predict(chunk, method))
                except InvalidInput as exc:
                    error = renumbered(exc, chunk.offset)
                    predictions.clear()
        except Declined:
            return self.predict(batch.chunks.general(), method)
        if error is not None:
            raise error
        return predictions

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
            except self.input_errors:
                hi = mid
            else:
                lo = mid
        if hi - lo != 1:
            return None
        try:
            self.call(method, take[lo:hi])
        except self.input_errors:
            return lo
        return None

    def warm_up(self) -> None:
        """Predict once on a record built from the schema (known categories, typical
        numbers): proves the model works on what a request will bring."""
        record = self.schema.typical_record()
        if record is None:
            logger.warning(
                "The model does not say how many features it takes: no warm-up."
            )
            return
        self.call(self.default_method, self.to_input(Batch(rows=[record])))


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
    """``joblib.load`` restricted to the scientific stack and trusted modules
    (``safeload.py``). Warnings (e.g. ``InconsistentVersionWarning``) are logged, never
    silenced."""
    from modelapp import lazy, safeload

    lazy.import_sklearn()  # the pickle's classes import it; without pandas (lazy.py)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = safeload.load_artifact(artifact)
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
