"""The models this process serves, by name, and whether each can predict.

Single-model mode is the registry holding one entry, ``DEFAULT_MODEL``, loaded from the
SageMaker model dir (``SMSERVE['BASE_DIR']/model``). ``registry.load()`` runs in gunicorn's
master before it forks (``smserve/wsgi.py``), so the workers share one copy of the model;
anywhere else the first ``get()`` loads it. A missing, corrupt or unloadable model never
raises out of ``load()``: the entry keeps the reason, and ``get()`` turns it into a 503.

Loading itself belongs to the predictor kinds (``predictors/``): the registry reads
``metadata.json``, asks each kind of ``SMSERVE['PREDICTORS']`` in turn whether it
``handles`` the directory, lets the first one load it, checksums the artifact and runs the
warm-up prediction.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelapp import capture, conf, observers, outputs
from modelapp.exceptions import ModelNotReady
from modelapp.metadata import ModelMetadata, sha256_of
from modelapp.paths import SageMakerPaths
from modelapp.predictors.base import BasePredictor, ModelLoadError

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "ModelRegistry"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "model"
# While a model stays unloadable, its reason is logged again at most this often: a health
# check asks several times a second, and the one line that says why must not scroll away.
REMIND_SECONDS = 60.0


@dataclass
class LoadedModel:
    """A model that loaded and answered its warm-up prediction."""

    predictor: Any
    path: Path
    sha256: str
    size: int
    # None: the model came without a metadata.json (e.g. a bare joblib).
    metadata: ModelMetadata | None
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0


def load_model(model_dir: Path) -> LoadedModel:
    """Load and warm up the model in ``model_dir``; ``ModelLoadError`` says what went
    wrong."""
    started = time.perf_counter()
    try:
        metadata = ModelMetadata.read(model_dir)
        recorded = _recorded_artifact_sha256(model_dir, metadata)
        kind = predictor_kind(model_dir)
        predictor = kind.from_model_dir(model_dir, metadata)
    except OSError as exc:
        # A path the file system refuses (too long, no permission, not a directory
        # on the way): what is wrong with the directory, not a bug.
        raise ModelLoadError(
            f"The model directory {model_dir} cannot be read: {exc.strerror or exc}."
        ) from exc
    except ModelLoadError:
        raise
    except Exception as exc:  # load() promises a reason, never an exception
        logger.exception("Loading %s failed.", model_dir)
        raise ModelLoadError(
            f"Loading {model_dir} failed: {type(exc).__name__}: {exc}"
        ) from exc
    outputs.configure(predictor)  # SAGEMAKER_INFERENCE_OUTPUT: a key it cannot give
    artifact = predictor.artifact
    if artifact is None:
        raise ModelLoadError(
            f"{type(predictor).__qualname__}.from_model_dir gave no artifact: a kind "
            "must name the file that identifies the model (BasePredictor)."
        )
    sha256 = (
        recorded[1] if recorded and recorded[0] == artifact else sha256_of(artifact)
    )
    try:
        # One thread: the warm-up runs in gunicorn's master before the workers fork, and
        # an OpenMP pool started there (HistGradientBoosting predicts in parallel) hangs
        # every forked worker's first parallel prediction (GNU libgomp is not fork-safe).
        from threadpoolctl import threadpool_limits

        warming = time.perf_counter()
        with threadpool_limits(limits=1, user_api="openmp"):
            predictor.warm_up()
        warmup_seconds = time.perf_counter() - warming
    except Exception as exc:  # the model cannot predict: not ready, whatever the cause
        logger.exception("Warm-up prediction failed.")
        raise ModelLoadError(
            f"{artifact.name} loaded but its warm-up prediction failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    # After the warm-up, so that its record is not counted as traffic.
    predictor.capture = capture.sampler_for(sha256, predictor)
    return LoadedModel(
        predictor=predictor,
        path=artifact,
        sha256=sha256,
        size=artifact.stat().st_size,
        metadata=predictor.metadata,
        load_seconds=time.perf_counter() - started,
        warmup_seconds=warmup_seconds,
    )


def _recorded_artifact_sha256(
    model_dir: Path, metadata: ModelMetadata | None
) -> tuple[Path, str] | None:
    """Check ``model.joblib`` against the sha256 ``metadata.json`` records. When they
    differ the file was replaced after training: it is served as it is, but what the
    metadata says of the files written beside it (``compiled``: ``model.onnx``) is
    dropped, so no graph of the old model answers for the new one."""
    artifact = model_dir / "model.joblib"
    if metadata is None or not metadata.sha256 or not artifact.is_file():
        return None
    sha256 = sha256_of(artifact)
    if sha256 != metadata.sha256:
        logger.warning(
            "%s has sha256 %s but metadata.json records %s: serving the file as it is, "
            "without the files metadata.json lists beside it (compiled: %s).",
            artifact,
            sha256,
            metadata.sha256,
            ", ".join(sorted(metadata.compiled or {})) or "none",
        )
        metadata.compiled = {}
    return artifact, sha256


def predictor_kind(model_dir: Path) -> type[BasePredictor]:
    """The first kind of ``SMSERVE['PREDICTORS']`` that handles ``model_dir``."""
    kinds = conf.import_classes("PREDICTORS", BasePredictor)
    for kind in kinds:
        if kind.handles(model_dir):
            return kind
    raise ModelLoadError(
        f"No predictor kind serves {model_dir} (tried "
        f"{', '.join(k.__qualname__ for k in kinds)})."
    )


@dataclass
class _Entry:
    model_dir: Path | None = None
    attempted: bool = False
    loaded: LoadedModel | None = None
    reason: str = "The model has not been loaded yet."
    # What was last logged about this entry's state, and when (time.monotonic()).
    logged_reason: str = ""
    logged_at: float = float("-inf")


class ModelRegistry:
    """Models by name, each loaded at most once unless ``load(force=True)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries.setdefault(name, _Entry())
        return entry

    def load(
        self,
        name: str = DEFAULT_MODEL,
        model_dir: Path | None = None,
        force: bool = False,
    ) -> LoadedModel | None:
        """Load ``name`` from ``model_dir`` (the default model: the SageMaker model dir);
        None when it cannot be, with the reason kept for ``get()``."""
        with self._lock:
            entry = self._entry(name)
            if entry.attempted and not force:
                return entry.loaded
            entry.attempted = True
            entry.loaded = None
            if model_dir is not None:
                entry.model_dir = model_dir
            # The default model follows the settings (a test may change BASE_DIR).
            model_dir = entry.model_dir or SageMakerPaths.from_settings().model_dir
            try:
                entry.loaded = load_model(model_dir)
            except ModelLoadError as exc:
                entry.reason = str(exc)
                if observers.sink is not None:
                    observers.sink.model_load_failed(name)
                logger.error("Model not loaded: %s", entry.reason)
                entry.logged_reason, entry.logged_at = entry.reason, time.monotonic()
                return None
            entry.logged_reason = ""
            loaded = entry.loaded
            if observers.sink is not None:
                observers.sink.model_loaded(name, loaded)
            predictor = loaded.predictor
            logger.info(
                "Loaded %s (%s, sha256 %s, %d features, methods %s) in %.2fs.",
                loaded.path,
                type(predictor.model).__name__,
                loaded.sha256[:12],
                predictor.n_features or 0,
                ",".join(predictor.available_methods),
                loaded.load_seconds,
            )
            return loaded

    def get(self, name: str = DEFAULT_MODEL) -> Any:
        """The predictor of ``name``, or ``ModelNotReady`` with the reason."""
        entry = self._entries.get(name)
        loaded = entry.loaded if entry is not None else None
        if loaded is None:
            if entry is None or not entry.attempted:
                loaded = self.load(name)
            if loaded is None:
                raise ModelNotReady(
                    f"The model is not loaded: {self._entry(name).reason}"
                )
        return loaded.predictor

    def remind_not_ready(self, name: str = DEFAULT_MODEL) -> None:
        """Log why ``name`` is not ready: when the reason is not the one last logged,
        else at most once every ``REMIND_SECONDS`` (for a health check that polls)."""
        entry = self._entry(name)
        if entry.loaded is not None:
            return
        now = time.monotonic()
        if (
            entry.reason == entry.logged_reason
            and now - entry.logged_at < REMIND_SECONDS
        ):
            return
        entry.logged_reason, entry.logged_at = entry.reason, now
        logger.error("Model not ready: %s", entry.reason)

    def before_fork(self) -> None:
        """In gunicorn's master, before the workers fork: each loaded predictor drops
        what a fork cannot copy (e.g. an ONNX Runtime session with a thread pool)."""
        for entry in list(self._entries.values()):
            if entry.loaded is not None:
                entry.loaded.predictor.before_fork()

    def after_fork(self) -> None:
        """In a new gunicorn worker: each loaded predictor remakes its per-process
        state (e.g. ONNX Runtime sessions) before the first request."""
        for entry in list(self._entries.values()):
            if entry.loaded is not None:
                entry.loaded.predictor.after_fork()

    def loaded_model(self, name: str = DEFAULT_MODEL) -> LoadedModel | None:
        entry = self._entries.get(name)
        return entry.loaded if entry is not None else None

    # The single-model view of the registry.
    @property
    def loaded(self) -> LoadedModel | None:
        return self.loaded_model(DEFAULT_MODEL)

    @property
    def reason(self) -> str:
        return self._entry(DEFAULT_MODEL).reason

    @property
    def ready(self) -> bool:
        return self.loaded is not None


registry = ModelRegistry()
