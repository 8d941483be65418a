"""The views in-process (Django's test client), including pluggability; the negotiation
rules themselves are tests/test_negotiation.py."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest
from django.test import Client, RequestFactory, override_settings
from rest_framework.renderers import BaseRenderer

from modelapp.registry import registry
from modelapp.views import InvocationsView, parse_custom_attributes
from tests.support.formats import TSVParser, TSVRenderer
from tests.support.inference_scripts import FOUR_HOOKS_PY
from tests.support.models import write_model
from tests.support.script_mode import source_dir


def smserve(base, **extra):
    from django.conf import settings

    return override_settings(SMSERVE={**settings.SMSERVE, "BASE_DIR": base, **extra})


@pytest.fixture
def serving(iris_base):
    """The global registry loaded with the iris tree; reset afterwards."""
    with smserve(iris_base):
        registry.load(force=True)
        yield Client()
    registry.load(force=True)


def test_custom_attributes_parsing():
    """Pairs split on commas or semicolons; tokens without '=' are not ours."""
    assert parse_custom_attributes("method=predict_proba; trace-id, x = 1") == {
        "method": "predict_proba",
        "x": "1",
    }


def test_default_accept_setting(serving, iris_base):
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT answers requests without Accept."""
    with smserve(iris_base, DEFAULT_ACCEPT="application/jsonlines"):
        response = serving.post(
            "/invocations", b"[[5.1,3.5,1.4,0.2]]", "application/json"
        )
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/jsonlines"
    assert response.content == b"0\n"


def test_default_content_type_setting(serving, iris_base):
    """SMSERVE_DEFAULT_CONTENT_TYPE reads bodies that come without a type."""
    with smserve(iris_base, DEFAULT_CONTENT_TYPE="application/json"):
        response = serving.generic(
            "POST", "/invocations", b"[[5.1,3.5,1.4,0.2]]", content_type=""
        )
    assert response.status_code == HTTPStatus.OK, response.content
    assert json.loads(response.content) == {"predictions": [0]}


def test_django_enforces_payload_limit(serving, iris_base):
    """The view's own 413 uses the same limit as nginx."""
    with smserve(iris_base, MAX_PAYLOAD_MB=1):
        response = serving.post(
            "/invocations",
            b"5.1,3.5,1.4,0.2\n" * 70_000,
            "text/csv",
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert json.loads(response.content)["code"] == "payload_too_large"


def test_new_format_is_a_class_and_a_settings_line(serving, iris_base):
    """Adding a parser and renderer to SMSERVE makes the view speak the new format."""
    from modelapp import conf

    with smserve(
        iris_base,
        PARSERS=[*conf.DEFAULTS["PARSERS"], "tests.support.formats.TSVParser"],
        RENDERERS=[*conf.DEFAULTS["RENDERERS"], "tests.support.formats.TSVRenderer"],
    ):
        response = serving.post(
            "/invocations",
            b"5.1\t3.5\t1.4\t0.2\n",
            "text/tab-separated-values",
            HTTP_ACCEPT="text/tab-separated-values",
        )
    assert response.status_code == HTTPStatus.OK, response.content
    assert response["Content-Type"] == "text/tab-separated-values"
    assert response.content == b"0\n"


def test_view_classes_can_be_given_to_as_view(serving):
    """Tests and embedders can bind parser/renderer lists per view."""
    view = InvocationsView.as_view(
        parser_classes=[TSVParser], renderer_classes=[TSVRenderer]
    )
    request = RequestFactory().post(
        "/invocations",
        b"6.7\t3.0\t5.2\t2.3\n",
        content_type="text/tab-separated-values",
    )
    response = view(request)  # predictions come back rendered; errors are DRF Responses
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "text/tab-separated-values"
    assert response.content == b"2\n"
    request = RequestFactory().post("/invocations", b"1,2,3,4", content_type="text/csv")
    response = view(request)
    response.render()
    assert response.status_code == HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class PlainTextRenderer(BaseRenderer):
    """A stock DRF renderer (not ours): returns str and declares a charset."""

    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return " ".join(str(v) for v in data.tolist()) + " é\n"


def test_any_drf_renderer_plugs_in(serving):
    """A plain DRF renderer gets the predictions and its charset, as DRF's Response
    would give it."""
    view = InvocationsView.as_view(renderer_classes=[PlainTextRenderer])
    request = RequestFactory().post(
        "/invocations", b"6.7,3.0,5.2,2.3\n5.1,3.5,1.4,0.2\n", content_type="text/csv"
    )
    response = view(request)
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == "2 0 é\n".encode()


def test_ping_not_ready_in_process(tmp_path):
    """Without a model, the in-process /ping is a 503 with the reason."""
    with smserve(tmp_path):
        registry.load(force=True)
        response = Client().get("/ping")
    registry.load(force=True)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "does not exist" in json.loads(response.content)["detail"]


# --- through the real server -----------------------------------------------------------
def log_lines(server, marker: str) -> list[str]:
    return [line for line in server.log.splitlines() if marker in line]


@pytest.mark.server
def test_an_echoed_value_is_cut_short_in_the_answer_and_the_log(server):
    """A CSV field of 1 MB is quoted in the 400 by its first characters and how many
    more there are: the detail is under 300 characters, its log line under 2 KB."""
    body = b"a" * (1 << 20) + b"\n"
    status, _, answer = server.invoke(body, Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    detail = json.loads(answer)["detail"]
    assert len(detail) < 300
    assert "(1048498 more characters) is not a number" in detail
    lines = log_lines(server, f"bytes_in={len(body)} ")
    assert lines
    assert all(len(line) < 2048 for line in lines), max(map(len, lines))


@pytest.mark.server
def test_every_answer_but_the_admins_is_sandboxed(server):
    """Predictions, status answers and 404s carry ``sandbox; default-src 'none'``: a
    browser runs nothing they hold, whatever their Content-Type."""
    status, headers, _ = server.invoke(b"5.1,3.5,1.4,0.2\n")
    assert status == HTTPStatus.OK
    assert headers["content-security-policy"] == "sandbox; default-src 'none'"
    for path in ("/execution-parameters", "/nowhere", "/static/admin/css/base.css"):
        status, headers, _ = server.request("GET", path)
        assert headers["content-security-policy"] == "sandbox; default-src 'none'"


@pytest.mark.server
def test_without_the_admin_no_static_files_are_served(server):
    """The admin's CSS is not served when the admin is off (it would tell a caller the
    container runs Django): a JSON 404."""
    status, headers, body = server.request("GET", "/static/admin/css/base.css")
    assert status == HTTPStatus.NOT_FOUND
    assert json.loads(body)["code"] == "not_found"


@pytest.mark.server
def test_detailed_errors_off_keeps_the_reason_in_the_log(serve_factory, tmp_path):
    """SMSERVE_DETAILED_ERRORS=false: /ping's 503 gives a generic reason, without the
    container's paths; the log has the real one.
    docs/serving.md, Errors: "or failing its warm-up (on `/ping` and `/invocations`,
    with the reason unless `SMSERVE_DETAILED_ERRORS=false`; the log says it when it
    changes and at most once a minute while it lasts, not once per ping)": here
    without the reason.
    docs/settings.md, Settings: "`SMSERVE_DETAILED_ERRORS`".
    """
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve_factory(
        empty, expect_status=503, env={"SMSERVE_DETAILED_ERRORS": "false"}
    )
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    assert json.loads(body) == {
        "detail": "The model is not loaded: the container's log says why.",
        "code": "model_not_ready",
    }
    assert f"The model directory {empty / 'model'} does not exist" in server.log


@pytest.mark.server
def test_detailed_errors_off_hides_a_scripts_exception(
    serve_factory, tmp_path, iris_model
):
    """SMSERVE_DETAILED_ERRORS=false: an exception in inference.py is a 500 that only
    says the script raised (its text and traceback are in the log); an error the
    script raised with a status of its own keeps its message, meant for the caller.
    docs/serving.md, Errors: "an exception in a script's hook (script mode; logged with
    its traceback; with `SMSERVE_DETAILED_ERRORS=false` a 500 says only that the script
    raised)".
    docs/settings.md, Settings: "`SMSERVE_DETAILED_ERRORS`".
    """
    write_model(tmp_path / "base", iris_model)
    source_dir(tmp_path / "base" / "model" / "code", {"inference.py": FOUR_HOOKS_PY})
    env = {"SMSERVE_DETAILED_ERRORS": "false", "SAGEMAKER_PROGRAM": "inference.py"}
    server = serve_factory(tmp_path / "base", env=env, workers=1)
    status, _, body = server.invoke(
        b'{"instances": [], "explode": true}', "application/json"
    )
    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert json.loads(body) == {
        "detail": "The inference script raised an error: the container's log has "
        "the traceback.",
        "code": "script_error",
    }
    assert "input_fn exploded on purpose" in server.log
    status, _, body = server.invoke(b"a,b\n", "text/csv")
    assert status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert json.loads(body)["detail"] == "iris takes JSON, not text/csv"
