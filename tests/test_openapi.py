"""docs/openapi.yaml: generated from the views (drf-spectacular), current, and covering
exactly what the URLconf routes; the media types it lists are the configured formats'.
tests/test_openapi_http.py holds the real server to it (schemathesis)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.test import override_settings
from django.urls import URLPattern, get_resolver

from modelapp import conf, formats
from tests.support import ROOT

DOCUMENT = ROOT / "docs" / "openapi.yaml"
REGENERATE = (
    ".venv/bin/python manage.py spectacular --file docs/openapi.yaml --validate "
    "--fail-on-warn"
)
METHODS = ("get", "post", "put", "patch", "delete")


def generate(tmp_path: Path, **smserve) -> str:
    """The document as ``REGENERATE`` writes it, with smserve's default settings (the
    environment of the test run does not leak in) plus ``smserve``."""
    out = tmp_path / "openapi.yaml"
    with override_settings(SMSERVE=smserve):
        call_command(
            "spectacular", file=str(out), validate=True, fail_on_warn=True, verbosity=0
        )
    return out.read_text()


@pytest.fixture(scope="module")
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def test_the_checked_in_document_is_current(tmp_path):
    """The file in the repository is what the views generate today, with no warning."""
    assert generate(tmp_path) == DOCUMENT.read_text(), (
        f"docs/openapi.yaml is out of date with the views: regenerate it with\n"
        f"    {REGENERATE}\nand commit it."
    )


def routed_operations() -> set[tuple[str, str]]:
    """(METHOD, /openapi/{path}) for every method of every view the URLconf routes,
    the admin's (an include, not the serving API) aside."""
    operations = set()
    for pattern in get_resolver().url_patterns:
        if not isinstance(pattern, URLPattern):
            continue
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        view = pattern.callback.view_class
        operations |= {(m.upper(), path) for m in METHODS if hasattr(view, m)}
    return operations


def test_every_routed_view_and_method_is_described(document):
    """A new path or method without a description fails here (and an operation that
    no view answers any more)."""
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    routed = routed_operations()
    assert len(routed) == 8
    assert described == routed


def test_every_operation_documents_its_errors_as_the_error_shape(document):
    """Each operation lists a 2xx and at least one error, and every JSON error body
    is the Error component ({detail, code})."""
    error = {"$ref": "#/components/schemas/Error"}
    assert set(document["components"]["schemas"]["Error"]["required"]) == {
        "detail",
        "code",
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = {int(s) for s in operation["responses"]}
            assert any(200 <= s < 300 for s in statuses), (method, path)
            errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
            assert errors, (method, path)
            for status, response in errors.items():
                schema = response["content"]["application/json"]["schema"]
                assert schema == error, (method, path, status)


def test_batch_bodies_are_the_configured_formats_and_their_aliases(document):
    """/invocations lists a request body for every Content-Type the negotiation reads
    (aliases and application/octet-stream included) and a 200 body for every renderer;
    errors come in each renderer's error type."""
    operation = document["paths"]["/invocations"]["post"]
    served = (
        formats.CSV,
        formats.JSON,
        formats.JSONLINES,
        formats.NPY,
        formats.PARQUET,
    )
    assert set(operation["requestBody"]["content"]) == {
        *(alias for alias, name in formats.ALIASES.items() if name in served),
        "application/octet-stream",
    }
    assert set(operation["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/jsonlines",
        "application/x-npy",
        "application/x-parquet",
    }
    assert set(operation["responses"]["415"]["content"]) == {
        "application/json",
        "text/csv",
        "application/jsonlines",
    }
    assert operation["responses"]["200"]["headers"][
        "X-Amzn-SageMaker-Custom-Attributes"
    ]["required"]
    invoke_model = document["paths"]["/models/{name}/invoke"]["post"]
    assert invoke_model["requestBody"] == operation["requestBody"]
    assert set(invoke_model["responses"]) == {*operation["responses"], "404"}


def test_a_plugged_format_appears_in_the_document(tmp_path):
    """The media types come from SMSERVE['PARSERS'] / ['RENDERERS']: a new format is in
    the description without touching it; a default Content-Type moves
    application/octet-stream to its parser."""
    text = generate(
        tmp_path,
        PARSERS=[*conf.DEFAULTS["PARSERS"], "tests.support.formats.TSVParser"],
        RENDERERS=[*conf.DEFAULTS["RENDERERS"], "tests.support.formats.TSVRenderer"],
        DEFAULT_CONTENT_TYPE="application/json",
    )
    operation = yaml.safe_load(text)["paths"]["/invocations"]["post"]
    request = operation["requestBody"]["content"]
    assert request["text/tab-separated-values"]["schema"] == {
        "$ref": "#/components/schemas/Bytes"
    }
    assert (
        request["application/octet-stream"]["schema"]
        == request["application/json"]["schema"]
    )
    assert "text/tab-separated-values" in operation["responses"]["200"]["content"]
