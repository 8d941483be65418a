"""Predictor kinds: the registry asks each in turn, and a kind that owns its input or
output changes what the view negotiates (no 415/406 for it), not the view itself."""

from __future__ import annotations

import importlib
import json
import sys
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import RequestFactory, override_settings

from modelapp import conf
from modelapp.exceptions import InvalidInput
from modelapp.predictors import (
    BasePredictor,
    InputSchema,
    InvocationResult,
    ModelLoadError,
    ScriptPredictor,
    SklearnPredictor,
)
from modelapp.predictors import compiled as compiled_engine
from modelapp.registry import ModelRegistry, load_model, predictor_kind
from modelapp.views import InvocationsView
from tests.support.linear_kind import LinearModel, save_linear


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


class NoArtifactPredictor(EchoPredictor):
    """Forgets to say which file is the model."""

    @classmethod
    def from_model_dir(cls, model_dir, metadata):
        return cls(model=None, metadata=metadata)


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


def test_a_kind_must_name_its_artifact(tmp_path):
    """A kind whose ``from_model_dir`` names no artifact cannot load (a 503 with the
    reason), rather than failing with an AttributeError in gunicorn's master."""
    kinds = ["tests.test_predictor_kinds.NoArtifactPredictor"]
    with override_settings(SMSERVE={**settings.SMSERVE, "PREDICTORS": kinds}):
        with pytest.raises(ModelLoadError, match="NoArtifactPredictor.from_model_dir"):
            load_model(echo_dir(tmp_path))


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


# --- the previous release's dotted paths -------------------------------------------------
OLD_PREDICTORS = [
    "modelapp.script_predictor.ScriptPredictor",
    "modelapp.predictors.SklearnPredictor",
]


def test_the_previous_releases_dotted_paths_still_load(iris_base, monkeypatch):
    """``SMSERVE['PREDICTORS']`` written for the previous layout (``modelapp.predictors``
    was a module, script mode ``modelapp.script_predictor``) passes the checks and
    serves, and says the module moved."""
    monkeypatch.delitem(sys.modules, "modelapp.script_predictor", raising=False)
    with override_settings(SMSERVE={**settings.SMSERVE, "PREDICTORS": OLD_PREDICTORS}):
        with pytest.deprecated_call(match="modelapp.predictors.script"):
            kinds = conf.import_classes("PREDICTORS", BasePredictor)
        assert kinds == (ScriptPredictor, SklearnPredictor)
        call_command("check")
        assert isinstance(load_model(iris_base / "model").predictor, SklearnPredictor)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("modelapp.tables", "Table", InputSchema),
        ("modelapp.engines", "compile_model", compiled_engine.compile_model),
        ("modelapp.script_predictor", "ScriptPredictor", ScriptPredictor),
    ],
)
def test_the_moved_modules_keep_their_names(monkeypatch, old, name, new):
    """Imports of the moved modules work for one more release, with a warning."""
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.deprecated_call(match=old):
        module = importlib.import_module(old)
    assert getattr(module, name) is new


# --- a kind that is not scikit-learn, served by the real server ------------------------
def test_a_kind_of_ones_own_is_served(serve_factory, tmp_path):
    """A plain-JSON linear model (``tests/support/linear_kind.py``), its kind put first
    in ``PREDICTORS`` by a settings module, answers through nginx and gunicorn: CSV in,
    JSON out, records by feature name, and the usual 400 for a wrong width."""
    model_dir = tmp_path / "base" / "model"
    model_dir.mkdir(parents=True)
    save_linear(LinearModel(["a", "b"], [2.0, -1.0], 0.5), model_dir)
    server = serve_factory(
        tmp_path / "base",
        env={"DJANGO_SETTINGS_MODULE": "tests.support.linear_settings"},
        workers=1,
    )
    status, _, body = server.invoke(b"1,2\n3,1\n", Accept="application/json")
    assert status == HTTPStatus.OK, body
    assert json.loads(body) == {"predictions": [0.5, 5.5]}
    status, _, body = server.invoke(
        json.dumps([{"b": 0, "a": 1}]).encode(), "application/json"
    )
    assert (status, json.loads(body)) == (HTTPStatus.OK, {"predictions": [2.5]})
    status, _, body = server.invoke(b"1,2,3\n", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    assert json.loads(body)["detail"] == "Expected 2 features per record, got 3."
