"""Script mode's predictor in-process: loading a user's inference.py, its hooks and
errors, and the official container's default encoders byte for byte."""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.test import override_settings

from modelapp.batch import Batch
from modelapp.exceptions import NotAcceptable
from modelapp.predictors import ModelLoadError
from modelapp.predictors.script import (
    ScriptContext,
    ScriptError,
    ScriptPredictor,
    encode_prediction,
)
from modelapp.registry import load_model
from tests.support.inference_scripts import (
    BROKEN_PY,
    DEFAULTS_PY,
    FOUR_HOOKS_PY,
    MODEL_FN_FAILS_PY,
)
from tests.support.models import write_model


def script_mode(program: str = "inference.py", submit: str = ""):
    return override_settings(
        SMSERVE={**settings.SMSERVE, "PROGRAM": program, "SUBMIT_DIRECTORY": submit}
    )


@pytest.fixture
def model_dir(tmp_path, iris_model) -> Path:
    write_model(tmp_path, iris_model)
    return tmp_path / "model"


def with_code(model_dir: Path, text: str) -> Path:
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    (code / "inference.py").write_text(text)
    return model_dir


def test_encoders_match_the_official_defaults():
    """JSON is json.dumps of a bare list (Python's separators), CSV numpy.savetxt with
    fmt %s, NPY numpy.save: the bytes the official container's encoders produce."""
    labels = np.array([0, 1, 2])
    scores = np.array([[0.25, 0.75], [1.0, 0.0]])
    assert encode_prediction(labels, "application/json") == b"[0, 1, 2]"
    assert (
        encode_prediction(scores, "application/json") == b"[[0.25, 0.75], [1.0, 0.0]]"
    )
    assert encode_prediction(labels, "text/csv") == b"0\n1\n2\n"
    assert encode_prediction(scores, "text/csv") == b"0.25,0.75\n1.0,0.0\n"
    assert encode_prediction(np.array(["setosa", "virginica"]), "text/csv") == (
        b"setosa\nvirginica\n"
    )
    npy = encode_prediction(scores, "application/x-npy")
    reference = io.BytesIO()
    np.save(reference, scores)
    assert npy == reference.getvalue()
    with pytest.raises(NotAcceptable):
        encode_prediction(labels, "application/xml")


def test_kind_applies_only_in_script_mode(model_dir):
    """Without SAGEMAKER_PROGRAM the scikit-learn kind serves the directory."""
    assert not ScriptPredictor.handles(model_dir)
    with script_mode():
        assert ScriptPredictor.handles(model_dir)


def test_model_code_layout_with_defaults(model_dir, iris):
    """model/code/inference.py with model_fn only: smserve's parsing and the official
    default output; the warm-up ran through the default predict."""
    with_code(model_dir, DEFAULTS_PY)
    with script_mode():
        loaded = load_model(model_dir)
    predictor = loaded.predictor
    assert isinstance(predictor, ScriptPredictor)
    assert not predictor.owns_input
    assert predictor.owns_output
    assert loaded.path.name == "model.joblib"
    X, _ = iris
    result = predictor.invoke(Batch(values=X[:3]), {}, "text/csv", "application/json")
    assert result.body == b"[0, 0, 0]"
    assert result.content_type == "application/json"
    proba = predictor.invoke(
        Batch(values=X[:1]), {"method": "predict_proba"}, "text/csv", "text/csv"
    )
    assert proba.body == b"1.0,0.0,0.0\n"


def test_four_hooks_get_the_raw_body_and_context(model_dir):
    """input_fn takes the body as text for JSON types; output_fn's (body, type) and the
    custom attributes it sets through context are the response's."""
    with_code(model_dir, FOUR_HOOKS_PY)
    with script_mode():
        predictor = load_model(model_dir).predictor
    assert predictor.owns_input
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    result = predictor.invoke(
        body,
        {},
        "application/vnd.iris+json",
        "application/json",
        headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=abc"},
    )
    assert json.loads(result.body) == {
        "labels": [0],
        "top": [1.0],
        "accept": "application/json",
    }
    assert result.content_type == "application/vnd.iris+json"
    assert result.headers == {"X-Amzn-SageMaker-Custom-Attributes": "echo=trace=abc"}


def test_hook_errors_carry_their_status_or_500(model_dir):
    """HTTPError(422) answers 422 with its message and code; any other exception 500 with
    the script, hook and message."""
    with_code(model_dir, FOUR_HOOKS_PY)
    with script_mode():
        predictor = load_model(model_dir).predictor
    with pytest.raises(ScriptError) as raised:
        predictor.invoke(b"{}", {}, "application/json", "application/json")
    assert raised.value.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert raised.value.get_codes() == "no_instances"
    with pytest.raises(ScriptError) as raised:
        predictor.invoke(
            b'{"instances": [], "explode": true}', {}, "application/json", "*/*"
        )
    assert raised.value.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert str(raised.value.detail) == (
        "inference.py: input_fn raised RuntimeError: input_fn exploded on purpose"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BROKEN_PY, r"could not be imported: NameError: .*inference\.py:6\)"),
        (MODEL_FN_FAILS_PY, r"model_fn raised FileNotFoundError: .*inference\.py:2\)"),
    ],
)
def test_a_broken_script_is_a_load_error_naming_file_and_line(model_dir, text, reason):
    with_code(model_dir, text)
    with script_mode(), pytest.raises(ModelLoadError, match=reason):
        load_model(model_dir)


def test_missing_code_dir_says_where_it_looked(model_dir):
    with script_mode(), pytest.raises(ModelLoadError, match="has no code/ directory"):
        load_model(model_dir)


def test_context_reads_headers_case_insensitively(tmp_path):
    context = ScriptContext("model", tmp_path, {"X-Amzn-SageMaker-Inference-Id": "i-1"})
    assert context.get_request_header(0, "x-amzn-sagemaker-inference-id") == "i-1"
    assert context.get_request_id() == "i-1"
    assert context.custom_attributes == ""
    assert context.system_properties["model_dir"] == str(tmp_path)


@pytest.mark.django_db
def test_admin_names_the_script(model_dir):
    """The trained model's row says which script serves it, then the estimator."""
    from modelapp.models import TrainedModel

    with_code(model_dir, DEFAULTS_PY)
    with script_mode():
        loaded = load_model(model_dir)
    row = TrainedModel.record(loaded)
    assert row.estimator == "script:inference.py (sklearn.tree.DecisionTreeClassifier)"
    assert str(row) == f"inference.py {loaded.sha256[:12]}"


class FlaskLikeResponse:
    """What the official container's workaround returns from output_fn: a Flask
    ``Response`` (duck-typed: Flask is not installed here)."""

    def __init__(self, body: bytes, status_code: int, content_type: str) -> None:
        self.status_code = status_code
        self.content_type = content_type
        self._body = body

    def get_data(self) -> bytes:
        return self._body


def test_a_returned_flask_response_keeps_its_status(model_dir):
    """Users of the official container answered 4xx by returning a Flask Response from
    output_fn; its status and body are honoured."""
    with_code(model_dir, DEFAULTS_PY)
    with script_mode():
        predictor = load_model(model_dir).predictor
    ok = FlaskLikeResponse(b"fine", 200, "text/plain")
    assert predictor._response(ok, "application/json") == (b"fine", "text/plain")
    refused = FlaskLikeResponse(b"bad row\n", 400, "text/plain")
    with pytest.raises(ScriptError, match="bad row") as raised:
        predictor._response(refused, "application/json")
    assert raised.value.status_code == HTTPStatus.BAD_REQUEST
