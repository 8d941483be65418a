"""A deployment's choice of what a prediction returns: ``SAGEMAKER_INFERENCE_OUTPUT``.

SageMaker's own containers (Autopilot's, XGBoost's) let the model's environment name the
outputs of every answer, comma-separated, in order; a batch transform job, which cannot
send custom attributes, gets probabilities that way. smserve offers the same keys:

================== ===================================================================
key                each record's value
================== ===================================================================
predicted_label    the model's ``predict``
probability        a classifier's probability of its second label (``classes_[1]``:
                   1, True) when it has two labels; else of the label it predicts
                   (the largest probability), as Autopilot defines it
probabilities      ``predict_proba``'s row, in ``labels`` order
labels             the classifier's labels (``classes_``), the same for every record
transform          the model's ``transform`` (a featurizer's output row)
================== ===================================================================

The keys are checked when the model loads (``configure``, from ``registry.load_model``,
so every model of a multi-model endpoint too): a key the model cannot give keeps it
from loading, and ``/ping`` answers 503 naming the key and the keys the model offers.
``SAGEMAKER_INFERENCE_SUPPORTED`` (Autopilot sets it beside the other), when set, must
hold every key asked for. A request's custom attribute ``method=...`` still answers
with that one method, as without the variable; a script-mode model's ``output_fn``
owns its answer, so the variable does not apply to it.

The answer is a ``KeyedPredictions``, which each renderer writes in its own way
(``renderers.py``): CSV one line per record with the keys in order and a list as one
field in Python's list notation (``"[0.9, 0.1]"``, ``"['no', 'yes']"``, as Autopilot
writes it); JSON ``{"predictions": [{key: value, ...}]}``; JSON Lines one object per
record; NPY only one key of numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelapp import conf
from modelapp.batch import Batch, ChunkedPredictions, KeyedPredictions
from modelapp.exceptions import NotAcceptable
from modelapp.predictors.base import BasePredictor, InvocationResult, ModelLoadError

logger = logging.getLogger(__name__)

KEYS = ("predicted_label", "probability", "probabilities", "labels", "transform")
# The method each key is computed from.
_METHOD = {
    "predicted_label": "predict",
    "probability": "predict_proba",
    "probabilities": "predict_proba",
    "labels": "predict_proba",
    "transform": "transform",
}


@dataclass
class OutputSpec:
    """The keys a deployment asked for, checked against one model."""

    keys: tuple[str, ...]
    # The classifier's labels; None for a model without them.
    labels: np.ndarray | None

    @property
    def methods(self) -> tuple[str, ...]:
        """The model's methods the keys need, each once (``predict`` at least, which
        also checks the records of a request that asks only for ``labels``)."""
        methods = dict.fromkeys(_METHOD[key] for key in self.keys if key != "labels")
        return tuple(methods) or ("predict",)

    def invoke(self, predictor: BasePredictor, batch: Batch) -> InvocationResult:
        """Answer a request with these keys, each record's values computed from the
        model's methods (the renderer refuses, with a 406, keys its format cannot
        carry: ``BaseBatchRenderer.keyed_refusal``)."""
        results = {m: _whole(predictor.predict(batch, m)) for m in self.methods}
        columns: dict[str, np.ndarray] = {}
        for key in self.keys:
            if key == "labels":
                assert self.labels is not None  # configure() checked the model has them
                columns[key] = self.labels
                continue
            column = results[_METHOD[key]]
            if key == "probability":
                # Two labels: the second's (the "positive" one); more: the predicted
                # one's.
                column = column[:, 1] if column.shape[1] == 2 else column.max(axis=1)
            columns[key] = column
        return InvocationResult(
            method="+".join(self.methods),
            records=len(batch),
            predictions=KeyedPredictions(self.keys, columns, len(batch)),
        )


class OutputNotRenderable(NotAcceptable):
    """The negotiated format cannot carry the keys asked for (406)."""

    def __init__(self, detail: str) -> None:
        super(NotAcceptable, self).__init__(detail)


def offered_keys(predictor: BasePredictor) -> tuple[str, ...]:
    """The keys ``predictor``'s model can give."""
    model = predictor.model
    has_labels = getattr(model, "classes_", None) is not None
    can = {
        "predicted_label": "predict" in predictor.available_methods,
        "probability": has_labels and "predict_proba" in predictor.available_methods,
        "transform": callable(getattr(model, "transform", None)),
    }
    can["probabilities"] = can["labels"] = can["probability"]
    return tuple(key for key in KEYS if can[key])


def configure(predictor: BasePredictor) -> None:
    """Check ``SMSERVE['INFERENCE_OUTPUT']`` against the model and give the predictor
    its ``OutputSpec``; ``ModelLoadError`` (the 503's reason) when it cannot be met."""
    keys = conf.get("INFERENCE_OUTPUT")
    if not keys:
        return
    if predictor.owns_output:
        logger.info(
            "SAGEMAKER_INFERENCE_OUTPUT is not applied to a %s: its output_fn owns "
            "the answer.",
            type(predictor).__name__,
        )
        return
    offered = offered_keys(predictor)
    for key in keys:
        if key not in KEYS:
            raise ModelLoadError(
                f"SAGEMAKER_INFERENCE_OUTPUT names {key!r}, which is not an output "
                f"key; the keys are {', '.join(KEYS)}, and this model offers "
                f"{', '.join(offered) or 'none of them'}."
            )
        if key not in offered:
            raise ModelLoadError(
                f"SAGEMAKER_INFERENCE_OUTPUT names {key!r}, which this model (a "
                f"{type(predictor.model).__name__}) cannot give; it supports "
                f"{', '.join(offered) or 'none of the keys'}."
            )
    supported = conf.get("INFERENCE_SUPPORTED")
    if supported is not None:
        beyond = [key for key in keys if key not in supported]
        if beyond:
            raise ModelLoadError(
                f"SAGEMAKER_INFERENCE_OUTPUT names {', '.join(beyond)}, which "
                "SAGEMAKER_INFERENCE_SUPPORTED does not list "
                f"({', '.join(supported) or 'empty'})."
            )
    labels = getattr(predictor.model, "classes_", None)
    predictor.outputs = OutputSpec(
        keys=tuple(keys), labels=np.asarray(labels) if labels is not None else None
    )
    if "transform" in keys and "transform" not in predictor.available_methods:
        # The key calls the method; a custom attribute may then ask for it too.
        predictor.available_methods += ("transform",)
    logger.info("Each answer holds %s (SAGEMAKER_INFERENCE_OUTPUT).", ", ".join(keys))


def _whole(predictions: Any) -> np.ndarray:
    if isinstance(predictions, ChunkedPredictions):
        return predictions.whole()
    return predictions
