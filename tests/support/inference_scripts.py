"""Serving scripts for script mode, our own versions of the SDK documentation's examples
("Using scikit-learn with the SageMaker Python SDK", "Serve a Model"): the hooks a user
of the official scikit-learn container writes, written the way that page shows them."""

from __future__ import annotations

# model_fn only: every other step is the container's default.
DEFAULTS_PY = """\
import os

import joblib


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""

# All four hooks, each with the toolkit's optional trailing context where it helps.
FOUR_HOOKS_PY = """\
import json
import os

import joblib
import numpy as np

from smserve.errors import HTTPError

JSON_TYPES = ("application/json", "application/vnd.iris+json")


def model_fn(model_dir):
    return {"tree": joblib.load(os.path.join(model_dir, "model.joblib")), "loaded": True}


def input_fn(request_body, request_content_type, context):
    if request_content_type not in JSON_TYPES:
        raise HTTPError(415, f"iris takes JSON, not {request_content_type}")
    # The toolkit's rule: application/json and text/csv arrive as text, others as bytes.
    expected = str if request_content_type == "application/json" else bytes
    if not isinstance(request_body, expected):
        raise TypeError(f"{request_content_type} reached input_fn as {type(request_body)}")
    document = json.loads(request_body)
    if "instances" not in document:
        raise HTTPError(422, "expected {\\"instances\\": [[...], ...]}", code="no_instances")
    if document.get("explode"):
        raise RuntimeError("input_fn exploded on purpose")
    return np.asarray(document["instances"], dtype=float)


def predict_fn(input_data, model):
    tree = model["tree"]
    return {"labels": tree.predict(input_data), "scores": tree.predict_proba(input_data)}


def output_fn(prediction, accept, context):
    context.set_response_header(
        0, "X-Amzn-SageMaker-Custom-Attributes", "echo=" + context.custom_attributes
    )
    body = {
        "labels": prediction["labels"].tolist(),
        "top": prediction["scores"].max(axis=1).round(3).tolist(),
        "accept": accept,
    }
    return json.dumps(body), "application/vnd.iris+json"
"""

TRANSFORM_PY = """\
import io
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def transform_fn(model, request_body, content_type, accept):
    rows = np.loadtxt(io.StringIO(request_body), delimiter="|", ndmin=2)
    return "|".join(str(int(label)) for label in model.predict(rows)) + "\\n"
"""

BROKEN_PY = """\
import os

def model_fn(model_dir):
    return None

undefined_name + 1
"""

MODEL_FN_FAILS_PY = """\
def model_fn(model_dir):
    raise FileNotFoundError("no weights.bin in " + model_dir)
"""

# All four hooks for the SDK's own predictors (tests/test_sdk_predictor.py): NPY, the
# SKLearnPredictor default, and JSON, in and out; predict_fn answers the class
# probabilities, so an answer shows that every hook ran.
SDK_HOOKS_PY = """\
import io
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type == "application/x-npy":
        return np.load(io.BytesIO(request_body), allow_pickle=False)
    if request_content_type == "application/json":
        return np.asarray(json.loads(request_body), dtype=float)
    raise ValueError(f"cannot read {request_content_type}")


def predict_fn(input_data, model):
    return model.predict_proba(input_data)


def output_fn(prediction, accept):
    if accept == "application/x-npy":
        buffer = io.BytesIO()
        np.save(buffer, prediction)
        return buffer.getvalue(), accept
    if accept == "application/json":
        return json.dumps(prediction.tolist()), accept
    raise ValueError(f"cannot write {accept}")
"""

# No model_fn (smserve loads model.joblib), the default input_fn and output_fn; predict_fn
# shapes the response through its context, and raises an exception that is not smserve's
# but carries a status_code, as the toolkit's GenericInferenceToolkitError does.
NO_MODEL_FN_PY = """\
class ToolkitError(Exception):
    def __init__(self, status_code, message):
        super().__init__(message)
        self.status_code = status_code


def predict_fn(input_data, model, context):
    if context.get_request_header(0, "X-Teapot"):
        raise ToolkitError(418, "short and stout")
    if context.get_request_header(0, "X-Status"):
        context.set_response_status(int(context.get_request_header(0, "X-Status")))
        context.set_response_content_type(0, "text/vnd.iris")
    labels = model.predict(input_data)
    return [f"{label}:{input_data.dtype}" for label in labels]
"""
