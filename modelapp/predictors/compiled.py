"""Compiled predictions: a scikit-learn model converted to ONNX (skl2onnx) and run by ONNX
Runtime, used for a method only when it has been verified to answer as scikit-learn does.

``compile_model`` runs once per model, where the model loads (gunicorn's master, before the
fork). It takes ``model.onnx`` written by ``train`` when that file belongs to the artifact
(its checksum is in ``metadata.json``), else converts the model itself. Then it verifies:

- **The verification set**: ``verification.npy`` beside the model (a sample of the training
  rows that ``train`` saves), else records built from the model. For a tree, a forest or a
  gradient-boosting ensemble, one record per leaf (up to ``MAX_RECORDS`` leaves), each
  following its leaf's path with the value of every split at the threshold itself (which
  goes left) or just above it in float32 (which goes right): both sides of every split on
  the path, where a float32/float64 mismatch would show. For other models, the warm-up
  record (zeros) and seeded random neighbours of it.
- **The rule**: labels (classifiers' ``predict``) must be identical on every record;
  probabilities and regression values must agree within ``RTOL`` relative and ``ATOL``
  absolute (``numpy.allclose``). A method that fails, or that the converted graph does
  not offer, stays with scikit-learn, and one log line says why.

Missing values: a model that accepts NaN (scikit-learn's trees learn where missing values
go; the converted graph does not) has its records holding NaN answered by scikit-learn, the
others by the engine, in one response.

Numerics: float32 input where scikit-learn itself computes in float32 (trees and their
ensembles), double precision otherwise (linear models, scalers, SVMs, kNN, naive Bayes,
MLPs).

Featurizers (``transform`` and no ``predict``): the numeric ones (``FEATURIZERS`` and
pipelines of them) are converted, their graph's one output the transformed matrix, and
``transform`` verified and served like any method; any other featurizer is not converted
at all, and the report says why scikit-learn serves its ``transform``.

Tables with text columns: a pipeline that starts with a ``ColumnTransformer`` is converted
by ``table_onnx`` into a graph over the table's columns (``CompiledTable``), verified on
seeded records holding every known category, an unseen one, a missing one and numeric
gaps (``TABLE_RECORDS``), fed the request's columns as the schema reads them
(``schema.Columns``); its graph sends gaps and unknown categories where the pipeline does,
so no record is set aside. Other models fed text columns stay with scikit-learn.

Which engine serves each method, and why, is one log line at load and the admin's
"Prediction engines" (``EngineReport``); batches go to scikit-learn above the size
``crossover_limit`` finds, a rule that gives the same answer on a noisy machine.

One session per container: ``compile_model`` makes the session where the model loads
(gunicorn's master, before the fork), verifies and times it there, and the workers run that
same session, its memory shared copy-on-write (``OnnxSession``). It runs
``SMSERVE['COMPILED_THREADS']`` intra-op threads (default: BLAS's share of the cores, one per
worker whenever there are at least as many workers as cores) and one inter-op thread,
without a memory arena. With more than one intra-op thread a session has a thread pool,
which a fork does not copy: then each worker makes its own session after the fork, and one
log line says so. The serving process needs ONNX Runtime alone: a model without ``train``'s
``model.onnx`` is converted in a short-lived forked child (``convert_apart``), so skl2onnx,
onnx and pandas are never imported where the model is served.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelapp import conf
from modelapp.exceptions import InvalidInput

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
VERIFICATION_FILE = "verification.npy"
MAX_RECORDS = 4000
RTOL, ATOL = 1e-5, 1e-6
# The batch size the engine's cost per record is measured on (``_crossover``).
CROSSOVER_BATCH = 1000
# The rounds of that measurement, and how much cheaper scikit-learn must be to serve.
CROSSOVER_ROUNDS = 5
CROSSOVER_MARGIN = 1.25
# Records a table pipeline is verified on (``table_onnx.records``).
TABLE_RECORDS = 2000
# Probabilities this close are a tie that float32 may break either way (CompiledMethods).
TIE_GAP = 1e-5
# How much of a converter's or runtime's message a log line and the admin keep.
MESSAGE_CHARS = 300
ENGINE = "onnxruntime"
# The featurizers converted: numeric scalers and projections, whose graph is the
# arithmetic scikit-learn does (encoders, imputers and column selections are not).
FEATURIZERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "PCA")
SKLEARN = "scikit-learn"


class CompileError(Exception):
    """Why a model is not compiled (it is then served by scikit-learn)."""


@dataclass
class EngineReport:
    """Which engine serves each method, and why: logged, kept in the admin."""

    methods: dict[str, str] = field(default_factory=dict)
    # Each method's engine, and why that one (one sentence per method).
    why: dict[str, str] = field(default_factory=dict)
    # What was compiled: the model's class, a pipeline's steps, a table's encoders.
    model: str = ""
    # Which methods the graph answers as scikit-learn does (whether or not it serves them).
    verified: dict[str, bool] = field(default_factory=dict)
    reason: str = ""
    source: str = ""
    dtype: str = ""
    records: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    # Batches above this many records go to scikit-learn (None: none do).
    max_records: int | None = None
    seconds: float = 0.0

    @classmethod
    def scikit_learn(
        cls, model: Any, methods: tuple[str, ...], reason: str
    ) -> EngineReport:
        """Every method by scikit-learn, for ``reason``."""
        return cls(
            methods=dict.fromkeys(methods, SKLEARN),
            why=dict.fromkeys(methods, reason),
            model=describe(model),
            reason=reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": self.methods,
            "why": self.why,
            "model": self.model,
            "verified": self.verified,
            "reason": self.reason,
            "source": self.source,
            "dtype": self.dtype,
            "verification_records": self.records,
            "max_abs_diff": self.max_abs_diff,
            "max_records": self.max_records,
            "tolerance": {"rtol": RTOL, "atol": ATOL},
            "seconds": round(self.seconds, 3),
        }

    def log(self) -> None:
        """The start-up log line: each method's engine, then why."""
        served = ", ".join(f"{m} by {e}" for m, e in self.methods.items())
        why = "; ".join(f"{m}: {w}" for m, w in self.why.items())
        if not self.source and not self.records:
            logger.info(
                "Engines for %s: every method by %s (%s). Why: %s.",
                self.model,
                SKLEARN,
                self.reason,
                why,
            )
            return
        logger.info(
            "Engines for %s: %s (%s; %d verification records, max |diff| %s; %s; "
            "batches over %s records to scikit-learn; %.2fs). Why: %s.",
            self.model,
            served,
            self.reason,
            self.records,
            {m: f"{d:.2g}" for m, d in self.max_abs_diff.items()},
            self.source or "no graph",
            "no" if self.max_records is None else self.max_records,
            self.seconds,
            why,
        )


def describe(model: Any) -> str:
    """A model's class; a pipeline's steps, and a ColumnTransformer's parts, in turn."""
    steps = getattr(model, "steps", None)
    if steps:
        return f"{type(model).__name__}({', '.join(describe(s) for _, s in steps)})"
    parts = getattr(model, "transformers_", None)
    if parts:
        inner = [describe(p) if not isinstance(p, str) else p for _, p, _ in parts]
        return f"{type(model).__name__}({', '.join(inner)})"
    if type(model).__name__ == "FunctionTransformer" and model.func is None:
        return "passthrough"
    return type(model).__name__


def input_dtype(model: Any) -> type:
    """float32 where scikit-learn computes in float32 itself (trees, tree ensembles)."""
    return np.float32 if _trees(_final_step(model)) is not None else np.float64


def is_featurizer(model: Any) -> bool:
    """A model with ``transform`` and no ``predict``: it serves ``transform``."""
    return hasattr(model, "transform") and not hasattr(model, "predict")


def refuse_featurizer(model: Any) -> None:
    """``CompileError`` for a featurizer that is not ``FEATURIZERS`` or a pipeline of
    them: refused before any conversion work."""
    if not is_featurizer(model):
        return
    steps = [step for _, step in getattr(model, "steps", None) or [("", model)]]
    others = [type(s).__name__ for s in steps if type(s).__name__ not in FEATURIZERS]
    if others:
        raise CompileError(
            f"the compiled engine converts only the numeric featurizers "
            f"({', '.join(FEATURIZERS)} and pipelines of them), not {', '.join(others)}"
        )


def convert(model: Any, n_features: int) -> bytes:
    """``model`` as a serialized ONNX graph with one input ``X`` of ``n_features``."""
    from modelapp.predictors import tree_onnx  # trees and forests, without skl2onnx

    refuse_featurizer(model)

    if tree_onnx.supports(model, n_features):
        return tree_onnx.to_onnx(model, n_features)
    try:
        from skl2onnx import to_onnx

        from modelapp.predictors import hgb_onnx  # our HistGradientBoosting converter
    except ImportError as exc:
        raise CompileError(f"skl2onnx is not installed ({exc})") from exc
    hgb_onnx.register()
    sample: np.ndarray = np.zeros((1, n_features), dtype=input_dtype(model))
    # Keyed by the model itself, not by name: skl2onnx then skips one of its walks over
    # every attribute of the model, which computes each tree's properties (seconds for
    # a large forest); the graph is the same.
    options = (
        {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onx = to_onnx(model, sample, options=options)
    except Exception as exc:  # any converter failure means: not compiled
        raise CompileError(f"skl2onnx cannot convert it ({_brief(exc)})") from exc
    return onx.SerializeToString()


def threads() -> int:
    configured = conf.get("COMPILED_THREADS")
    if configured:
        return int(configured)
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        return 1


class OnnxSession:
    """An ONNX Runtime session over ``onnx_bytes``, made where the model loads.

    With one intra-op thread (the default whenever there are at least as many workers as
    cores) the session has no thread pool, so a fork copies all of it: gunicorn's master
    makes it before the fork and every worker runs that one session, its memory shared
    copy-on-write (``after_fork`` adopts it). With more threads the session's pool would
    not survive a fork: the master drops its session before the fork (``before_fork``) and
    each worker makes its own after it.

    A process forked from one that loaded ONNX Runtime hangs or aborts in ONNX Runtime's
    exit handlers if it ends through Python's teardown: gunicorn's workers end with
    ``os._exit`` (``smserve.workers.exit_without_teardown``). A process that was forked
    but never adopted the session (not a gunicorn worker) makes its own on first use.
    """

    def __init__(
        self, onnx_bytes: bytes, dtype: type, thread_count: int | None = None
    ) -> None:
        self.onnx_bytes = onnx_bytes
        self.dtype = dtype
        self.threads = thread_count or threads()
        # Sessions this process inherited and no longer runs: kept, never destroyed,
        # since destroying one in a forked process runs ONNX Runtime's teardown there.
        self._inherited: list[Any] = []
        self._session: Any = None
        self._pid = -1
        self._make()
        session: Any = self._session
        self.outputs = [output.name for output in session.get_outputs()]

    @property
    def shared(self) -> bool:
        """Whether the processes forked from this one run this very session."""
        return self.threads == 1

    def _make(self) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise CompileError(f"onnxruntime is not installed ({exc})") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Memory allocated per run and freed after it, rather than an arena and planned
        # patterns that each process forked from the master would grow on its own.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        if self._session is not None:
            self._inherited.append(self._session)
        try:
            self._session = onnxruntime.InferenceSession(
                self.onnx_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a graph ONNX Runtime cannot load: not compiled
            raise CompileError(f"ONNX Runtime cannot load it ({_brief(exc)})") from exc
        self._input = self._session.get_inputs()[0].name
        self._pid = os.getpid()

    def before_fork(self) -> None:
        """In gunicorn's master, before the workers fork: drop the session when it
        cannot be shared (more than one thread); each worker makes its own."""
        if self.shared or self._pid != os.getpid():
            return
        self._session, self._pid = None, -1
        logger.info(
            "ONNX Runtime runs %d intra-op threads per session (SMSERVE_COMPILED_THREADS "
            "or BLAS's share of the cores): each worker makes its own session, since a "
            "session's thread pool does not survive a fork; with one thread, the "
            "workers would share the master's.",
            self.threads,
        )

    def after_fork(self) -> None:
        """In a gunicorn worker: run the master's session, or make this process's own."""
        if self.shared and self._session is not None:
            self._pid = os.getpid()
        else:
            self._make()

    def run(self, matrix: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs for a float matrix, or for a dict of its inputs."""
        if self._pid != os.getpid():
            self._make()
        feed = matrix if isinstance(matrix, dict) else {self._input: matrix}
        return self._session.run(None, feed)


class CompiledMethods:
    """The verified methods of one model, as callables on a checked float matrix.

    A classifier's label is the graph's, except for records whose two best classes are
    within ``TIE_GAP`` in probability: there float32 sums may break a tie another way than
    scikit-learn's float64 ones, so scikit-learn (``fallback``) labels those records.
    """

    def __init__(
        self,
        session: OnnxSession,
        model: Any,
        fallback: Any = None,
        allows_nan: bool = False,
    ) -> None:
        self.session = session
        self.dtype = session.dtype
        self.fallback = fallback
        # Missing values: scikit-learn's trees learn where they go, the converted graph
        # does not; records holding NaN are scikit-learn's.
        self.nan_to_fallback = allows_nan and fallback is not None
        # Larger batches are scikit-learn's, where it is the faster (``_crossover``).
        self.max_records: int | None = None
        classes = getattr(model, "classes_", None)
        self._label_dtype = classes.dtype if classes is not None else None
        self._classifier = "probabilities" in session.outputs
        # A featurizer's graph has one output, the transformed matrix.
        self._featurizer = is_featurizer(model)

    def prepare(self, matrix: np.ndarray) -> np.ndarray:
        if self.dtype is np.float32:
            return as_float32(matrix)
        return np.ascontiguousarray(matrix, dtype=np.float64)

    def take(self, matrix: Any, rows: Any) -> Any:
        """Some of a batch's records (a boolean mask or a slice)."""
        return matrix[rows]

    def _split_nan(self, method: str, matrix: np.ndarray, run: Any) -> np.ndarray:
        """``run`` on the records without NaN, scikit-learn on the others, in order."""
        missing = np.isnan(matrix).any(axis=1)
        if not missing.any():
            return run(matrix)
        if missing.all():
            return np.asarray(self.fallback(method, matrix))
        ours = run(matrix[~missing])
        theirs = np.asarray(self.fallback(method, matrix[missing]))
        out = np.empty(
            (len(matrix), *ours.shape[1:]), dtype=np.result_type(ours, theirs)
        )
        out[~missing], out[missing] = ours, theirs
        return out

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self.max_records is not None and len(matrix) > self.max_records:
            return np.asarray(self.fallback("predict", matrix))
        if self.nan_to_fallback:
            return self._split_nan("predict", matrix, self._predict)
        return self._predict(matrix)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if self.max_records is not None and len(matrix) > self.max_records:
            return np.asarray(self.fallback("predict_proba", matrix))
        if self.nan_to_fallback:
            return self._split_nan("predict_proba", matrix, self._predict_proba)
        return self._predict_proba(matrix)

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        if self.max_records is not None and len(matrix) > self.max_records:
            return np.asarray(self.fallback("transform", matrix))
        if self.nan_to_fallback:
            return self._split_nan("transform", matrix, self._transform)
        return self._transform(matrix)

    def _transform(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(self.prepare(matrix))[0])

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        outputs = self.session.run(self.prepare(matrix))
        if self._classifier:
            labels = np.asarray(outputs[0]).astype(self._label_dtype, copy=False)
            proba = np.asarray(outputs[1])
            if self.fallback is not None and proba.ndim == 2 and proba.shape[1] > 1:
                best = np.partition(proba, -2, axis=1)[:, -2:]
                ties = best[:, 1] - best[:, 0] <= TIE_GAP
                if ties.any():
                    labels = labels.copy()
                    labels[ties] = self.fallback("predict", self.take(matrix, ties))
            return labels
        values = np.asarray(outputs[0])
        return values.ravel() if values.ndim == 2 and values.shape[1] == 1 else values

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(self.prepare(matrix))[1])

    def available(self) -> tuple[str, ...]:
        if self._featurizer:
            return ("transform",)
        return ("predict", "predict_proba") if self._classifier else ("predict",)


class CompiledTable(CompiledMethods):
    """The verified methods of a table pipeline (``table_onnx``), as callables on the
    DataFrame the schema builds: its text columns and its numbers go to the graph as
    they are. The graph sends missing values and unknown categories where the pipeline
    does (verified), so no record is set aside for scikit-learn."""

    def __init__(
        self, session: OnnxSession, model: Any, schema: Any, fallback: Any = None
    ) -> None:
        super().__init__(session, model, fallback)
        self.features = schema.features
        self.labels = schema.labels
        # Columns nothing says are numbers (passed through): a batch with text in one
        # is scikit-learn's, whose error names it.
        self._loose = [
            label
            for label, feature in zip(self.labels, self.features, strict=True)
            if feature.kind == "any"
        ]

    def _text_in_numbers(self, matrix: Any) -> bool:
        data = getattr(matrix, "data", None)
        return data is not None and any(data[i].dtype == object for i in self._loose)

    def predict(self, matrix: Any) -> np.ndarray:
        if self._loose and self._text_in_numbers(matrix):
            return np.asarray(self.fallback("predict", matrix))
        return super().predict(matrix)

    def predict_proba(self, matrix: Any) -> np.ndarray:
        if self._loose and self._text_in_numbers(matrix):
            return np.asarray(self.fallback("predict_proba", matrix))
        return super().predict_proba(matrix)

    def prepare(self, matrix: Any) -> Any:
        from modelapp.predictors import table_onnx

        return table_onnx.feeds(matrix, self.features, self.labels, self.dtype)

    def take(self, matrix: Any, rows: Any) -> Any:
        if hasattr(matrix, "iloc") and not hasattr(matrix, "data"):  # a DataFrame
            return matrix.iloc[rows]
        return matrix[rows]


def compile_model(
    model: Any,
    model_dir: Path | None,
    n_features: int | None,
    methods: tuple[str, ...],
    allows_nan: bool,
    metadata: Any = None,
    fallback: Any = None,
    schema: Any = None,
) -> tuple[dict[str, Any], EngineReport]:
    """The methods ONNX Runtime serves for ``model`` (verified), and the report.
    ``metadata`` (a ``ModelMetadata``) says which graph train wrote; ``schema`` (the
    predictor's ``InputSchema``) whether a column is text and how records become a
    DataFrame; ``fallback(method, matrix)`` is scikit-learn's own call."""
    started = time.perf_counter()
    report = EngineReport.scikit_learn(model, methods, "")
    engines: dict[str, Any] = {}
    try:
        if not n_features:
            raise CompileError("the model does not say how many features it takes")
        refuse_featurizer(model)
        compiled: CompiledMethods
        if _takes_text(metadata, schema):
            compiled, records = _compile_table(
                model, model_dir, n_features, metadata, schema, fallback, report
            )
        else:
            onnx_bytes, report.source = _onnx_bytes(
                model, model_dir, n_features, metadata
            )
            dtype = input_dtype(model)
            compiled = CompiledMethods(OnnxSession(onnx_bytes, dtype), model, fallback)
            records = verification_records(model, model_dir, n_features)
        report.dtype = np.dtype(compiled.dtype).name
        report.records = len(records)
        wanted = [m for m in methods if m in compiled.available()]
        verdicts = {m: _verify(model, compiled, m, records) for m in wanted}
        # Timed on a method verified (the records are ones both engines answered).
        verified = [m for m in wanted if verdicts[m][0]]
        limit = _crossover(model, compiled, records, verified[0]) if verified else None
        compiled.nan_to_fallback = (
            allows_nan and fallback is not None and type(compiled) is CompiledMethods
        )
        compiled.max_records = limit if fallback is not None else None
        report.max_records = compiled.max_records
        engines = _verified_engines(compiled, verdicts, report)
    except CompileError as exc:
        report.reason = f"not compiled: {exc}"
        report.why = dict.fromkeys(methods, report.reason)
    report.seconds = time.perf_counter() - started
    report.log()
    return engines, report


def _takes_text(metadata: Any, schema: Any) -> bool:
    features = getattr(schema, "features", None) or getattr(metadata, "features", None)
    return any(feature.kind != "numeric" for feature in features or ())


def _compile_table(
    model: Any,
    model_dir: Path | None,
    n_features: int,
    metadata: Any,
    schema: Any,
    fallback: Any,
    report: EngineReport,
) -> tuple[CompiledTable, Any]:
    """A table pipeline's graph (``table_onnx``), converted apart, and the DataFrame
    of records it is verified on."""
    from modelapp.predictors import table_onnx

    if not table_onnx.is_table_pipeline(model):
        raise CompileError(
            "it takes text (categorical) columns, and is not a pipeline that starts "
            "with a ColumnTransformer"
        )
    features = getattr(schema, "features", None)
    if not features:
        raise CompileError("the model does not say what its columns are")
    onnx_bytes, report.source = _onnx_bytes(
        model,
        model_dir,
        n_features,
        metadata,
        lambda: _apart(convert_table, model, features, schema.labels),
    )
    session = OnnxSession(onnx_bytes, input_dtype(model))
    compiled = CompiledTable(session, model, schema, fallback)
    rows = table_onnx.records(model, features, schema.labels, TABLE_RECORDS)
    return compiled, schema.to_columns(rows)


def convert_table(model: Any, features: list[Any], labels: list[Any]) -> bytes:
    """``table_onnx.to_onnx``, its refusals as ``CompileError``."""
    from modelapp.predictors import table_onnx

    try:
        return table_onnx.to_onnx(model, features, labels, convert, input_dtype(model))
    except table_onnx.NotConvertible as exc:
        raise CompileError(str(exc)) from exc
    except CompileError:
        raise
    except Exception as exc:  # any converter failure means: not compiled
        raise CompileError(f"the table converter failed ({_brief(exc)})") from exc


def _verified_engines(
    compiled: CompiledMethods,
    verdicts: dict[str, tuple[bool, float, str]],
    report: EngineReport,
) -> dict[str, Any]:
    """The methods that passed verification, noted in ``report`` with the reason the
    others did not; none when scikit-learn is as fast at every batch size."""
    engines: dict[str, Any] = {}
    failures = []
    for method in report.methods:
        if method not in verdicts:
            report.why[method] = "the graph does not compute it"
    for method, (ok, diff, why) in verdicts.items():
        report.max_abs_diff[method] = diff
        report.verified[method] = ok
        if ok:
            engines[method] = getattr(compiled, method)
            report.methods[method] = ENGINE
            report.why[method] = f"verified on {report.records} records" + (
                ""
                if compiled.max_records is None
                else f"; batches over {compiled.max_records} records to "
                "scikit-learn, faster there (measured at load)"
            )
        else:
            failures.append(f"{method}: {why}")
            report.why[method] = f"verification failed ({why})"
    if failures:
        report.reason = "verification failed for " + "; ".join(failures)
    elif verdicts:
        report.reason = "verified on every record"
    else:
        report.reason = "the graph computes none of the methods served"
    if engines and compiled.max_records == 0:
        report.methods = dict.fromkeys(report.methods, SKLEARN)
        not_used = (
            "not used: scikit-learn answers this model as fast or faster at any "
            "batch size (measured at load)"
        )
        report.reason += "; " + not_used
        for method in engines:
            report.why[method] = f"verified, {not_used}"
        return {}
    return engines


def _onnx_bytes(
    model: Any,
    model_dir: Path | None,
    n_features: int,
    metadata: Any,
    converter: Any = None,
) -> tuple[bytes, str]:
    """``train``'s ``model.onnx`` when it is the graph train wrote, else
    ``converter()`` (by default ``convert_apart``)."""
    compiled = (getattr(metadata, "compiled", None) or {}) if metadata else {}
    path = model_dir / ONNX_FILE if model_dir is not None else None
    if path is not None and path.is_file() and compiled.get("onnx") == ONNX_FILE:
        data = path.read_bytes()
        recorded = compiled.get("onnx_sha256")
        if recorded is None or recorded == hashlib.sha256(data).hexdigest():
            return data, f"{ONNX_FILE} written by train"
        logger.warning(
            "%s is not the graph train wrote (its sha256 differs from metadata.json's "
            "onnx_sha256): converting the model again.",
            path,
        )
    if converter is not None:
        return converter(), "converted at start-up"
    return convert_apart(model, n_features), "converted at start-up"


def convert_apart(model: Any, n_features: int) -> bytes:
    """``convert`` run in a forked child (``_apart``)."""
    return _apart(convert, model, n_features)


def _apart(converter: Any, *args: Any) -> bytes:
    """``converter(*args)`` in a forked child, whose graph comes back over a pipe:
    skl2onnx, onnx and pandas (which skl2onnx imports) and the conversion's garbage, tens of MB
    for a forest, stay out of the serving process, and so out of every worker forked
    from it. The child ends with ``os._exit``, running no exit code of the parent's."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: convert, report, and leave
        status = 0
        try:
            os.close(read_end)
            try:
                result: tuple[str, Any] = ("graph", converter(*args))
            except CompileError as exc:
                result = ("error", str(exc))
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(result))
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        raise CompileError(f"the conversion process failed (wait status {status})")
    kind, value = pickle.loads(payload)
    if kind == "error":
        raise CompileError(value)
    return value


def _crossover(
    model: Any, compiled: CompiledMethods, records: Any, method: str = "predict"
) -> int | None:
    """Up to how many records the engine answers faster than scikit-learn; None when it
    always does. Each engine's ``method`` (``predict``, a featurizer's ``transform``)
    on one record and on ``CROSSOVER_BATCH``,
    CPU time, the four measured in turn ``CROSSOVER_ROUNDS`` times and each case's
    fastest run kept: on a busy machine the fastest run is the least disturbed, and a
    disturbance lasting a while falls on every case alike. ``crossover_limit`` then
    decides with a margin. A deep forest on a large batch can be slower in ONNX Runtime
    than in scikit-learn (``bench/RESULTS.md``, round 4)."""
    rows = compiled.take(records, np.resize(np.arange(len(records)), CROSSOVER_BATCH))
    if isinstance(rows, np.ndarray):
        rows = rows.astype(np.float64)
    one = compiled.take(rows, slice(0, 1))
    sklearn_call = (
        (lambda X: compiled.fallback(method, X))
        if compiled.fallback is not None
        else getattr(model, method)
    )
    ours = getattr(compiled, f"_{method}")
    cases = [(ours, one), (ours, rows), (sklearn_call, one), (sklearn_call, rows)]
    fastest = [math.inf] * len(cases)
    for _ in range(CROSSOVER_ROUNDS):
        for i, (fn, X) in enumerate(cases):
            started = time.process_time()
            fn(X)
            fastest[i] = min(fastest[i], time.process_time() - started)
    return crossover_limit(*fastest)


def crossover_limit(
    ours_one: float, ours_batch: float, theirs_one: float, theirs_batch: float
) -> int | None:
    """The batch size above which scikit-learn serves, from the two engines' costs on
    one record and on ``CROSSOVER_BATCH`` records (a fixed part plus one per record).
    A side must be ``CROSSOVER_MARGIN`` times cheaper to count as cheaper, so that
    measurements a little apart make the same choice: None (the engine serves every
    batch) unless scikit-learn is cheaper per record; then 0 (scikit-learn serves every
    batch: not compiled) unless the engine is cheaper on one record; else the crossover,
    rounded down to a power of two."""
    per_ours = max(0.0, ours_batch - ours_one) / (CROSSOVER_BATCH - 1)
    per_theirs = max(0.0, theirs_batch - theirs_one) / (CROSSOVER_BATCH - 1)
    if per_theirs * CROSSOVER_MARGIN >= per_ours:
        return None
    if ours_one * CROSSOVER_MARGIN >= theirs_one:
        return 0
    fixed_gain = (theirs_one - per_theirs) - (ours_one - per_ours)
    limit = int(fixed_gain / (per_ours - per_theirs))
    return 1 << (limit.bit_length() - 1) if limit >= 1 else 1


def _verify(
    model: Any, compiled: CompiledMethods, method: str, records: Any
) -> tuple[bool, float, str]:
    dtype = compiled.dtype
    X: Any
    X_sklearn: Any
    if isinstance(compiled, CompiledTable):
        # The columns a request becomes, and scikit-learn their DataFrame, as served;
        # the pipeline converts them itself (its trees to float32 after the encoders).
        X, X_sklearn = records, records.frame()
    else:
        # scikit-learn sees the values the engine sees (a float32 engine's input is
        # float32).
        X = records.astype(dtype).astype(np.float64) if dtype is np.float32 else records
        X_sklearn = X
    names = getattr(model, "feature_names_in_", None)
    if names is not None and isinstance(X, np.ndarray):
        # Fitted on a DataFrame: scikit-learn is handed one, as served.
        import pandas

        X_sklearn = pandas.DataFrame(X, columns=list(names))
    try:
        expected = np.asarray(getattr(model, method)(X_sklearn))
        got = getattr(compiled, method)(X)
    except Exception as exc:  # a record either side refuses: not verified
        return False, float("nan"), _brief(exc)
    if expected.shape != got.shape:
        return False, float("nan"), f"shape {got.shape}, expected {expected.shape}"
    if expected.dtype.kind not in "fc":
        same = np.array_equal(expected, got)
        wrong = int((expected != got).sum()) if not same else 0
        return same, float(wrong), f"{wrong} of {len(X)} labels differ"
    diff = np.abs(expected - got.astype(np.float64))
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    nan_same = np.array_equal(np.isnan(expected), np.isnan(got))
    close = nan_same and np.allclose(
        got, expected, rtol=RTOL, atol=ATOL, equal_nan=True
    )
    return close, worst, f"max |diff| {worst:.3g} beyond rtol={RTOL}, atol={ATOL}"


def verification_records(
    model: Any, model_dir: Path | None, n_features: int
) -> np.ndarray:
    """The records a compiled engine must answer as scikit-learn does (module doc)."""
    path = model_dir / VERIFICATION_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        try:
            records = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring %s: %s.", path, exc)
        else:
            if records.ndim == 2 and records.shape[1] == n_features:
                return records.astype(np.float64)
    trees = _trees(model)
    if trees:
        records = leaf_records(trees, n_features)
    else:
        rng = np.random.default_rng(0)
        base = np.zeros((1, n_features))
        records = np.vstack([base, base + rng.standard_normal((255, n_features))])
    return records


def leaf_records(trees: list[Any], n_features: int) -> np.ndarray:
    """One record per leaf (at most ``MAX_RECORDS``, spread over the trees): the split
    values on its path at the threshold (left) or just above it in float32 (right)."""
    per_tree = max(4, MAX_RECORDS // max(1, len(trees)))
    records: list[np.ndarray] = []
    for estimator in trees:
        tree = estimator.tree_
        left, right = tree.children_left, tree.children_right
        feature, threshold = tree.feature, tree.threshold
        found = 0
        stack = [(0, np.zeros(n_features))]
        while stack and found < per_tree:
            node, x = stack.pop()
            if left[node] == -1:
                records.append(x)
                found += 1
                continue
            f, t = feature[node], threshold[node]
            if not np.isfinite(t):
                # A split of missing values from the rest (trees fitted with NaN): the
                # missing side is scikit-learn's anyway (CompiledMethods).
                stack.append((left[node], x))
                continue
            below, above = x.copy(), x.copy()
            below[f] = t
            above[f] = float(np.nextafter(np.float32(t), np.float32(np.inf)))
            stack.append((right[node], above))
            stack.append((left[node], below))
    return np.array(records[:MAX_RECORDS]) if records else np.zeros((1, n_features))


def _brief(exc: Exception) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _trees(model: Any) -> list[Any] | None:
    """The fitted decision trees of a tree model or ensemble, else None."""
    from sklearn.tree import BaseDecisionTree

    if isinstance(model, BaseDecisionTree):
        return [model]
    estimators = getattr(model, "estimators_", None)
    if estimators is None:
        return None
    flat = list(np.ravel(np.asarray(estimators, dtype=object)))
    if flat and all(isinstance(e, BaseDecisionTree) for e in flat):
        return flat
    return None


def as_float32(matrix: np.ndarray) -> np.ndarray:
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
