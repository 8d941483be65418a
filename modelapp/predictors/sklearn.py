"""The scikit-learn kind: any estimator or pipeline saved with joblib or pickle, served
by scikit-learn, or by ONNX Runtime for the methods verified to answer alike
(``compiled.py``)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelapp import conf
from modelapp.batch import Batch
from modelapp.metadata import ModelMetadata, allows_nan
from modelapp.predictors import compiled, explain_support
from modelapp.predictors.base import (
    MODEL_FILE,
    BasePredictor,
    InvocationResult,
    ModelLoadError,
    find_artifact,
    load_pickle,
)
from modelapp.predictors.compiled import as_float32
from modelapp.predictors.schema import Columns

logger = logging.getLogger(__name__)


class SklearnPredictor(BasePredictor):
    """Any scikit-learn estimator or pipeline (anything with ``predict``, or a featurizer
    with ``transform``: a scaler, an encoder, a ``ColumnTransformer``, PCA, a pipeline
    ending in one), saved with joblib or pickle: ``model.joblib`` (with
    ``metadata.json``), else the one ``*.joblib``/``*.pkl`` file of the directory."""

    methods = (
        "predict",
        "predict_proba",
        "predict_log_proba",
        "decision_function",
        "transform",
    )

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, metadata: ModelMetadata | None
    ) -> SklearnPredictor:
        artifact = find_artifact(model_dir)
        if artifact.name != MODEL_FILE:
            metadata = None  # metadata.json describes model.joblib, not another file
        model = load_pickle(artifact)
        if not any(callable(getattr(model, m, None)) for m in ("predict", "transform")):
            raise ModelLoadError(
                f"{artifact.name} holds a {type(model).__name__}, which has no predict "
                "method (nor transform, which a featurizer would serve)."
            )
        predictor = cls(model, metadata, artifact)
        predictor.compile(model_dir)
        return predictor

    @property
    def default_method(self) -> str:
        """``predict``, or for a featurizer (``transform`` and no ``predict``)
        ``transform``: the first of ``methods`` the model has."""
        return self._default_method

    def __init__(
        self,
        model: Any,
        metadata: ModelMetadata | None = None,
        artifact: Path | None = None,
    ) -> None:
        super().__init__(model, metadata, artifact)
        self._default_method = next(
            (m for m in self.methods if m in self.available_methods), self.methods[0]
        )
        # Methods ONNX Runtime serves, set by compile(); none until then.
        self._compiled: dict[str, Any] = {}
        # The explainer (explain.py), built by warm_up(), or why there is none.
        self.explainer: Any = None
        self.explain_refusal = "the model has not been warmed up"
        # Whether a compiled table graph serves a method: to_input keeps the columns.
        self._takes_columns = False
        self._frame = None
        if self.feature_names is not None and hasattr(self.model, "feature_names_in_"):
            # Fitted on a DataFrame: keep handing it one, or scikit-learn warns every call.
            import pandas

            self._frame = pandas.DataFrame
        # scikit-learn's trees document ``check_input=False`` to skip their per-call input
        # validation, most of a one-record tree prediction (``smserve/fastpaths.py``,
        # ``tree_check_input``). to_matrix has done that work: width, feature order,
        # NaN/infinity against the model's tags; what is left is the float32 conversion
        # (as_float32).
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
        (``compiled.py``); the others, and every method when it is off, stay here."""
        if not conf.get("COMPILED_ENGINE"):
            self.engine_report = compiled.EngineReport.scikit_learn(
                self.model, self.available_methods, "off (SMSERVE_COMPILED_ENGINE)"
            )
            self.engine_report.log()
            return
        # One OpenMP thread, as for the warm-up (registry.load): verification predicts
        # with scikit-learn before gunicorn's workers fork, and a GNU OpenMP pool
        # started then (HistGradientBoosting predicts in parallel) hangs the first
        # parallel prediction of a forked process.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            self._compiled, self.engine_report = compiled.compile_model(
                self.model,
                model_dir,
                self.n_features,
                self.available_methods,
                self.allows_nan,
                self.metadata,
                fallback=self._sklearn_call,
                schema=self.schema,
            )
        self._takes_columns = self.schema.is_frame and any(
            isinstance(method.__self__, compiled.CompiledTable)
            for method in self._compiled.values()
        )

    def to_input(self, batch: Batch) -> Any:
        """A table's columns as they are (``schema.Columns``) while a compiled table
        graph serves one of its methods; scikit-learn's methods make the DataFrame."""
        if self._takes_columns:
            return self.schema.to_columns(self._checked_width(self._align(batch)))
        return super().to_input(batch)

    def _sessions(self) -> set[Any]:
        return {method.__self__.session for method in self._compiled.values()}

    def before_fork(self) -> None:
        """Drop the ONNX Runtime sessions a fork cannot copy (``compiled.py``)."""
        for session in self._sessions():
            session.before_fork()

    def after_fork(self) -> None:
        """Each worker runs the master's ONNX Runtime sessions, or makes its own when
        they cannot be shared (``compiled.OnnxSession``)."""
        for session in self._sessions():
            session.after_fork()

    def warm_up(self) -> None:
        """The warm-up prediction, then the explainer, built here (gunicorn's master,
        before the fork) so the workers share its arrays."""
        super().warm_up()
        self.explainer, self.explain_refusal = explain_support.prepare(self)

    def explain(
        self, batch: Any, attributes: dict[str, str], accept: str
    ) -> InvocationResult:
        return explain_support.answer(self, batch, attributes, accept)

    def allows_nan_of(self, model: Any) -> bool:
        return allows_nan(model)

    def call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        engine = self._compiled.get(method)
        if engine is not None:
            return engine(matrix)
        return self._sklearn_call(method, matrix)

    def call_batch(self, method: str, matrix: Any, total: int | None) -> np.ndarray:
        """The compiled engine's routing by batch size follows the whole body."""
        engine = self._compiled.get(method)
        limit = getattr(getattr(engine, "__self__", None), "max_records", None)
        if total is not None and limit is not None and total > limit:
            return self._sklearn_call(method, matrix)
        return self.call(method, matrix)

    def _sklearn_call(self, method: str, matrix: np.ndarray) -> np.ndarray:
        if method in self._unchecked_methods:
            return np.asarray(
                getattr(self.model, method)(as_float32(matrix), check_input=False)
            )
        if isinstance(matrix, Columns):
            matrix = matrix.frame()
        if not isinstance(matrix, np.ndarray):
            # A table (schema.py): its encoders and imputers check their own columns,
            # and config_context would cost a small request more than the check it
            # saves (bench/tables.py).
            return _dense(getattr(self.model, method)(matrix))
        if self._frame is not None:
            matrix = self._frame(matrix, columns=self.feature_names, copy=False)
        # to_matrix has checked NaN/infinity against the model's tags already:
        # scikit-learn need not scan the batch again. (Imported here: scikit-learn
        # loads with the model, not with every management command.)
        from sklearn import config_context

        with config_context(assume_finite=True):
            return _dense(getattr(self.model, method)(matrix))


def _dense(result: Any) -> np.ndarray:
    """A method's answer as an array: a featurizer's ``transform`` may give a sparse
    matrix (``OneHotEncoder``, a ``ColumnTransformer`` holding one), which every
    renderer writes as the dense rows the next container reads."""
    if hasattr(result, "toarray"):
        result = result.toarray()
    return np.asarray(result)


def _is_tree(model: Any) -> bool:
    from sklearn.tree import BaseDecisionTree

    return isinstance(model, BaseDecisionTree)


def _takes_check_input(method: Any) -> bool:
    try:
        return "check_input" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
