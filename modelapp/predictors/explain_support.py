"""How a scikit-learn predictor serves ``method=explain``: the explainer built at load
(with its background and additivity check), then each request capped, explained within
its time and answered as ``explain.Explanations``."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from modelapp import conf, formats
from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput, NotAcceptable, PayloadTooLarge
from modelapp.predictors.base import EXPLAIN, InvocationResult
from modelapp.predictors.compiled import VERIFICATION_FILE

logger = logging.getLogger(__name__)

# The formats an explanation is written in.
FORMATS = (formats.JSON, formats.JSONLINES, formats.CSV)
# The share of the invocation timeout the sampling explainer may spend.
DEADLINE_SHARE = 0.5
MIB = 1024 * 1024
# Warm-up records made from the schema: the typical record and variants of it.
SCHEMA_RECORDS = 8


def prepare(predictor: Any) -> tuple[Any, str]:
    """``(explainer, "")``, or ``(None, why not)``; never raises: a model that cannot be
    explained still serves its predictions."""
    from modelapp.predictors.explain import (
        AdditivityError,
        ModelExplainer,
        NotExplainable,
    )

    if predictor.n_features is None:
        return None, "the model does not say how many features it takes"
    if not hasattr(predictor.model, "predict"):
        # A featurizer (modelapp/predictors/featurizer.py): no prediction to explain.
        return None, "the model is a featurizer: it transforms, it does not predict"
    try:
        over = _over_budget(predictor)
        if over:
            return None, over
        background = _input(predictor, background_rows(predictor))
        explainer = ModelExplainer(
            predictor.model,
            background,
            predictor.n_features,
            takes_numbers=not predictor.schema.is_frame,
        )
    except AdditivityError as exc:
        logger.warning(
            "Explanations of %s refused: %s.", type(predictor.model).__name__, exc
        )
        return None, str(exc)
    except NotExplainable as exc:
        logger.info("No explanations for %s: %s.", type(predictor.model).__name__, exc)
        return None, str(exc)
    except Exception as exc:  # a model the explainer misreads must still serve predict
        logger.exception("Building the explainer failed.")
        return None, f"building the explainer failed: {type(exc).__name__}: {exc}"
    logger.info(
        "Explanations of %s: the %s explainer (%s).",
        type(predictor.model).__name__,
        explainer.explainer.kind,
        explainer.explainer.output,
    )
    return explainer, ""


def _over_budget(predictor: Any) -> str:
    """Why no explainer is built within ``EXPLAIN_MEMORY_MB`` (logged), else ""."""
    from modelapp.predictors.explain import estimated_bytes

    name = type(predictor.model).__name__
    budget = conf.get("EXPLAIN_MEMORY_MB")
    if budget == 0:
        logger.info("No explanations for %s: SMSERVE_EXPLAIN_MEMORY_MB is 0.", name)
        return "explanations are off (SMSERVE_EXPLAIN_MEMORY_MB is 0)"
    # Rounded up, so raising the setting to the figure given is enough.
    needed = -(-estimated_bytes(predictor.model) // MIB)
    if needed <= budget:
        return ""
    logger.info(
        "No explanations for %s: its explainer's tables would take about %d MB, over "
        "SMSERVE_EXPLAIN_MEMORY_MB=%d; not built.",
        name,
        needed,
        budget,
    )
    return (
        f"its explainer's tables would take about {needed} MB, over the budget of "
        f"{budget} MB: set SMSERVE_EXPLAIN_MEMORY_MB to {needed} or more to explain it"
    )


def background_rows(predictor: Any) -> list[list[Any]]:
    """The training rows ``train`` kept (``verification.npy``) for a numeric model,
    else records made from the input schema: the typical record, and variants of it
    taking each category in turn."""
    artifact = predictor.artifact
    if artifact is not None and not predictor.schema.is_frame:
        path = artifact.parent / VERIFICATION_FILE
        if path.is_file():
            rows = np.load(path, allow_pickle=False)
            if rows.ndim == 2 and rows.shape[1] == predictor.n_features:
                return rows.astype(np.float64).tolist()
    typical = predictor.schema.typical_record()
    records = [typical]
    features = predictor.schema.features or []
    for i in range(1, SCHEMA_RECORDS):
        record = list(typical)
        for j, feature in enumerate(features):
            if feature.categories:
                record[j] = feature.categories[i % len(feature.categories)]
        if record not in records:
            records.append(record)
    return records


def _input(predictor: Any, rows: list[list[Any]]) -> Any:
    return _named(predictor, predictor.to_input(Batch(rows=rows)))


def _named(predictor: Any, matrix: Any) -> Any:
    """A numeric model fitted on a DataFrame is handed one (as ``SklearnPredictor``
    does), or scikit-learn warns on every call; a table's columns (``schema.Columns``,
    what a compiled table graph takes) become the DataFrame the explainer walks."""
    if hasattr(matrix, "frame"):
        return matrix.frame()
    frame = getattr(predictor, "_frame", None)
    if frame is not None and isinstance(matrix, np.ndarray):
        return frame(matrix, columns=predictor.feature_names, copy=False)
    return matrix


def answer(
    predictor: Any, batch: Any, attributes: dict[str, str], accept: str
) -> InvocationResult:
    """Explain every record of ``batch`` (``explain.Explanations``)."""
    from modelapp.predictors.explain import Explanations

    limit = conf.get("EXPLAIN_MAX_RECORDS")
    while batch.chunks is not None:
        batch = batch.chunks.whole()
    if len(batch) > limit:
        raise PayloadTooLarge(
            f"method=explain takes at most {limit} records per request "
            f"(SMSERVE_EXPLAIN_MAX_RECORDS); this one has {len(batch)}: split it.",
            code="too_many_records",
        )
    explainer = predictor.explainer
    if explainer is None:
        raise InvalidInput(
            f"This model cannot be explained: {predictor.explain_refusal}.",
            code="not_explainable",
        )
    if accept not in FORMATS:
        raise NotAcceptable(accept, FORMATS)
    deadline = time.monotonic() + DEADLINE_SHARE * conf.get("TIMEOUT")
    all_outputs = attributes.get("explain_classes", "").lower() == "all"
    matrix = _named(predictor, predictor.to_input(batch))
    answers = explainer.explain(matrix, all_outputs, deadline)
    names = predictor.feature_names or [str(i) for i in range(predictor.n_features)]
    classes = getattr(predictor.model, "classes_", None)
    return InvocationResult(
        method=EXPLAIN,
        records=len(answers),
        predictions=Explanations(
            answers,
            explainer.explainer,
            [str(name) for name in names],
            list(classes) if classes is not None else None,
            all_outputs,
        ),
    )
