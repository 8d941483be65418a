"""At training: what the compiled engine (``modelapp/predictors/compiled.py``) finds
beside the model, ``model.onnx`` and ``verification.npy``, and what ``metadata.json``
records of them. A model that does not convert is still saved, and served by
scikit-learn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelapp.files import atomic_write
from modelapp.predictors.compiled import (
    ONNX_FILE,
    VERIFICATION_FILE,
    CompileError,
    convert,
    input_dtype,
)

logger = logging.getLogger(__name__)

# Rows of the training data kept for verification.
VERIFICATION_ROWS = 1000


def compile_for_serving(
    estimator: Any, n_features: int, X: Any, model_dir: Path
) -> dict[str, Any]:
    """``save_for_serving``, for any training set: one that is not a float matrix (text
    columns) is recorded as not compiled."""
    try:
        return save_for_serving(estimator, n_features, X, model_dir)
    except (ValueError, TypeError) as exc:  # e.g. text columns: no float matrix
        logger.info("Not compiled to ONNX: %s", exc)
        return {"onnx_error": f"not a numeric table ({exc})"}


def save_for_serving(
    model: Any, n_features: int, X: Any, model_dir: Path
) -> dict[str, Any]:
    """``model.onnx`` and ``verification.npy`` beside the model; what ``metadata.json``
    records of them."""
    rows = np.asarray(X, dtype=np.float64)
    if len(rows) > VERIFICATION_ROWS:
        picked = np.random.default_rng(0).choice(len(rows), VERIFICATION_ROWS, False)
        rows = rows[np.sort(picked)]
    written: dict[str, Any] = {"verification": VERIFICATION_FILE}
    atomic_write(model_dir / VERIFICATION_FILE, lambda fh: np.save(fh, rows))
    try:
        onnx_bytes = convert(model, n_features)
    except CompileError as exc:
        logger.warning("Not compiled to ONNX: %s; scikit-learn will serve it.", exc)
        written["onnx_error"] = str(exc)
        return written
    atomic_write(model_dir / ONNX_FILE, onnx_bytes)
    written["onnx"] = ONNX_FILE
    written["dtype"] = np.dtype(input_dtype(model)).name
    return written
