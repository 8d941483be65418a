"""Predictor kinds: the registry asks each in turn, and a kind that owns its input or
output changes what the view negotiates (no 415/406 for it), not the view itself."""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

import pytest
from django.test import RequestFactory, override_settings

from modelapp.exceptions import InvalidInput
from modelapp.predictors import (
    BasePredictor,
    InvocationResult,
    ModelLoadError,
    SklearnPredictor,
)
from modelapp.registry import ModelRegistry, load_model, predictor_kind
from modelapp.views import InvocationsView


class EchoPredictor(BasePredictor):
    """Owns both ends: answers the body reversed, in the type the client accepts."""

    owns_input = owns_output = True

    @classmethod
    def handles(cls, model_dir: Path) -> bool:
        return (model_dir / "echo.txt").is_file()

    @classmethod
    def from_model_dir(cls, model_dir, metadata):
        return cls(model=None, metadata=metadata, artifact=model_dir / "echo.txt")

    def warm_up(self) -> None:
        pass

    def invoke(self, data, attributes, media_type, accept):
        if data == b"fail":
            raise InvalidInput("The echo model refuses 'fail'.")
        body = f"{media_type}|{accept}|{data[::-1].decode()}".encode()
        return InvocationResult(
            method="echo", records=1, body=body, content_type=accept
        )


KINDS = [
    "tests.test_predictor_kinds.EchoPredictor",
    "modelapp.predictors.SklearnPredictor",
]


def echo_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "echo.txt").write_text("echo")
    return model_dir


def with_kinds():
    from django.conf import settings

    return override_settings(SMSERVE={**settings.SMSERVE, "PREDICTORS": KINDS})


def test_first_kind_that_handles_the_directory_loads_it(tmp_path, iris_base):
    with with_kinds():
        assert predictor_kind(echo_dir(tmp_path)) is EchoPredictor
        assert predictor_kind(iris_base / "model") is SklearnPredictor
        assert isinstance(load_model(iris_base / "model").predictor, SklearnPredictor)


def test_no_kind_handles_the_directory(tmp_path):
    from django.conf import settings

    only_echo = {**settings.SMSERVE, "PREDICTORS": KINDS[:1]}
    with override_settings(SMSERVE=only_echo):
        with pytest.raises(ModelLoadError, match="No predictor kind serves"):
            load_model(tmp_path)


def test_registry_holds_models_by_name(tmp_path, iris_base):
    """Two entries, each with its own predictor and reason."""
    registry = ModelRegistry()
    with with_kinds():
        assert registry.load("echo", echo_dir(tmp_path)) is not None
        assert registry.load("iris", iris_base / "model") is not None
        assert registry.load("gone", tmp_path / "missing") is None
        assert isinstance(registry.get("echo"), EchoPredictor)
        assert isinstance(registry.get("iris"), SklearnPredictor)
        assert "does not exist" in registry._entry("gone").reason


def echo_view(tmp_path: Path):
    registry = ModelRegistry()
    with with_kinds():
        registry.load("echo", echo_dir(tmp_path))

    class EchoView(InvocationsView):
        def get_predictor(self, request, **kwargs):
            return registry.get("echo")

    return EchoView.as_view()


def test_owned_input_and_output_take_any_type(tmp_path):
    """A type no parser or renderer knows reaches the kind, which answers itself."""
    view = echo_view(tmp_path)
    request = RequestFactory().post(
        "/invocations",
        b"abc",
        content_type="text/html",
        HTTP_ACCEPT="application/x-made-up, */*;q=0.1",
    )
    response = view(request)
    assert response.status_code == HTTPStatus.OK, response.content
    assert response["Content-Type"] == "application/x-made-up"
    assert response.content == b"text/html|application/x-made-up|cba"
    assert response["X-Amzn-SageMaker-Custom-Attributes"] == "method=echo"


def test_owned_output_without_accept_answers_the_request_type(tmp_path):
    view = echo_view(tmp_path)
    request = RequestFactory().post("/invocations", b"xy", content_type="text/csv")
    response = view(request)
    assert response.status_code == HTTPStatus.OK
    assert response.content == b"text/csv|text/csv|yx"


def test_owned_output_errors_are_json(tmp_path):
    """An error from the kind is the usual JSON body, not the kind's format."""
    view = echo_view(tmp_path)
    request = RequestFactory().post(
        "/invocations", b"fail", content_type="text/html", HTTP_ACCEPT="text/html"
    )
    response = view(request)
    response.render()
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "detail": "The echo model refuses 'fail'.",
        "code": "invalid_input",
    }
