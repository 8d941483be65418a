"""What a training job leaves behind: ``model.joblib``, ``metadata.json``, metrics, status.

Every file is written to a temporary name in its final directory and renamed into place, so
a reader (the serving registry, SageMaker's upload) never sees half a file. ``metadata.json``
is renamed before ``model.joblib``: the model appearing is the commit point.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from modelapp.files import atomic_write
from modelapp.metadata import ModelMetadata, json_safe, sha256_of
from modelapp.paths import SageMakerPaths

logger = logging.getLogger(__name__)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def temporary_model_path(paths: SageMakerPaths) -> Path:
    """An empty temporary file beside ``model.joblib``; ``dump_model`` fills it and
    ``commit`` renames it. The caller removes it if the run does not get that far."""
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=paths.model_dir, prefix=f".{paths.model_file.name}.", suffix=".tmp"
    )
    os.close(fd)
    return Path(tmp)


def dump_model(estimator: Any, path: Path) -> None:
    """``joblib.dump`` to ``path``, flushed to disk."""
    import joblib

    with open(path, "wb") as fh:
        joblib.dump(estimator, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o644)


def commit(
    paths: SageMakerPaths, model_tmp: Path, metadata: ModelMetadata
) -> ModelMetadata:
    """Record the artifact's checksum in ``metadata``, then rename both into place."""
    metadata.sha256 = sha256_of(model_tmp)
    try:
        write_json(paths.metadata_file, metadata.to_dict())
        os.replace(model_tmp, paths.model_file)
    finally:
        model_tmp.unlink(missing_ok=True)
    logger.info(
        "Wrote %s (sha256 %s) and %s.",
        paths.model_file,
        metadata.sha256[:12],
        paths.metadata_file.name,
    )
    return metadata


def write_metrics(paths: SageMakerPaths, metrics: dict[str, float]) -> None:
    write_json(paths.metrics_file, json_safe(metrics))


def write_success(paths: SageMakerPaths) -> None:
    """An empty ``output/success``, as SageMaker's training toolkit leaves."""
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    paths.success_file.write_bytes(b"")


def write_failure(paths: SageMakerPaths, reason: str) -> None:
    """``output/failure``: SageMaker shows its first 1024 characters as FailureReason."""
    atomic_write(paths.failure_file, reason)


def clear_status(paths: SageMakerPaths) -> None:
    """Forget a previous local run's success or failure before this one starts."""
    for path in (paths.success_file, paths.failure_file):
        path.unlink(missing_ok=True)
