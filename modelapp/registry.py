"""Loads the model artifact once per process and knows whether it can predict.

``registry.load()`` runs in gunicorn's master before it forks (``smserve/wsgi.py``), so the
workers share one copy of the model; anywhere else the first ``get()`` loads it. A missing,
corrupt or unloadable model never raises out of ``load()``: the registry keeps the reason,
and ``get()`` turns it into a 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelapp import conf
from modelapp.exceptions import ModelNotReady
from modelapp.paths import SageMakerPaths

logger = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = (".joblib", ".pkl", ".pickle")


class ModelLoadError(Exception):
    """Why no model could be served; the message is what /ping and the logs say."""


@dataclass
class LoadedModel:
    """A model that loaded and answered its warm-up prediction."""

    predictor: Any
    path: Path
    sha256: str
    size: int
    metadata: dict[str, Any]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_seconds: float = 0.0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_artifact(paths: SageMakerPaths) -> Path:
    """``model.joblib``, else the one ``*.joblib``/``*.pkl`` in the model dir."""
    model_dir = paths.model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"The model directory {model_dir} does not exist.")
    names = sorted(p.name for p in model_dir.iterdir())
    logger.info(
        "Model directory %s holds: %s", model_dir, ", ".join(names) or "nothing"
    )
    if paths.model_file.is_file():
        return paths.model_file
    candidates = [model_dir / n for n in names if n.endswith(ARTIFACT_SUFFIXES)]
    candidates = [p for p in candidates if p.is_file()]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ModelLoadError(
            f"The model directory {model_dir} holds several artifacts "
            f"({', '.join(p.name for p in candidates)}): name the one to serve model.joblib."
        )
    hint = ""
    if "model.tar.gz" in names:
        hint = " It holds model.tar.gz: unpack it there (SageMaker does this itself)."
    raise ModelLoadError(
        f"No model artifact in {model_dir} (found: {', '.join(names) or 'nothing'}); "
        f"expected model.joblib or a single *.joblib/*.pkl file.{hint}"
    )


def read_metadata(paths: SageMakerPaths) -> dict[str, Any]:
    try:
        text = paths.metadata_file.read_text()
    except FileNotFoundError:
        return {}
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        logger.error(
            "Ignoring %s: it is not valid JSON (%s).", paths.metadata_file, exc
        )
        return {}
    if not isinstance(metadata, dict):
        logger.error("Ignoring %s: it is not a JSON object.", paths.metadata_file)
        return {}
    return metadata


def load_model(paths: SageMakerPaths) -> LoadedModel:
    """Find, load and warm up the model; ``ModelLoadError`` says what went wrong."""
    import joblib

    started = time.perf_counter()
    artifact = find_artifact(paths)
    metadata = read_metadata(paths) if artifact == paths.model_file else {}
    sha256 = sha256_of(artifact)
    expected = metadata.get("sha256")
    if expected and expected != sha256:
        logger.warning(
            "%s has sha256 %s but metadata.json records %s: serving the file as it is.",
            artifact,
            sha256,
            expected,
        )
    # joblib.load runs code from the file: the artifact is trusted input by contract.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = joblib.load(artifact)
        except (
            Exception
        ) as exc:  # any failure to unpickle is a broken artifact, not our bug
            logger.exception("Could not load %s.", artifact)
            raise ModelLoadError(
                f"Could not load {artifact.name}: {type(exc).__name__}: {exc}"
            ) from exc
    for warning in caught:
        # e.g. InconsistentVersionWarning: recorded, never silenced.
        logger.warning(
            "Loading %s: %s: %s",
            artifact.name,
            warning.category.__name__,
            warning.message,
        )
    if not callable(getattr(model, "predict", None)):
        raise ModelLoadError(
            f"{artifact.name} holds a {type(model).__name__}, which has no predict method."
        )
    predictor = conf.predictor_class()(model, metadata)
    try:
        predictor.warm_up()
    except Exception as exc:  # the model cannot predict: not ready, whatever the cause
        logger.exception("Warm-up prediction failed.")
        raise ModelLoadError(
            f"{artifact.name} loaded but its warm-up prediction failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return LoadedModel(
        predictor=predictor,
        path=artifact,
        sha256=sha256,
        size=artifact.stat().st_size,
        metadata=metadata,
        load_seconds=time.perf_counter() - started,
    )


class ModelRegistry:
    """The process's one model: loaded at most once unless ``load(force=True)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempted = False
        self.loaded: LoadedModel | None = None
        self.reason: str = "The model has not been loaded yet."

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def load(self, force: bool = False) -> LoadedModel | None:
        with self._lock:
            if self._attempted and not force:
                return self.loaded
            self._attempted = True
            self.loaded = None
            paths = SageMakerPaths.from_settings()
            try:
                self.loaded = load_model(paths)
            except ModelLoadError as exc:
                self.reason = str(exc)
                logger.error("Model not loaded: %s", self.reason)
                return None
            predictor = self.loaded.predictor
            logger.info(
                "Loaded %s (%s, sha256 %s, %d features, methods %s) in %.2fs.",
                self.loaded.path,
                type(predictor.model).__name__,
                self.loaded.sha256[:12],
                predictor.n_features or 0,
                ",".join(predictor.available_methods),
                self.loaded.load_seconds,
            )
            return self.loaded

    def get(self) -> Any:
        """The predictor, or ``ModelNotReady`` with the reason."""
        loaded = self.loaded
        if loaded is None:
            loaded = self.load() if not self._attempted else None
            if loaded is None:
                raise ModelNotReady(f"The model is not loaded: {self.reason}")
        return loaded.predictor

    def write_ready_file(self) -> None:
        """nginx answers /ping from this file, so health checks never queue behind
        /invocations on busy workers. gunicorn's master writes it once its socket is
        bound (``when_ready``), not on loading: a 200 from /ping promises that an
        invocation reaches the app. Nothing is written for a model that did not load."""
        target = conf.get("READY_FILE")
        if not target or self.loaded is None:
            return
        target = Path(target)
        body = json.dumps({"status": "ready", "sha256": self.loaded.sha256}).encode()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ready")
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)


registry = ModelRegistry()
