"""``modelapp.negotiation`` in-process: the Accept parser and the rules by which
``SageMakerContentNegotiation`` picks a parser from Content-Type and a renderer from
Accept (the module docstring's rules; ``test_contract_http.py`` checks them again
through the real server)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from modelapp import conf
from modelapp.exceptions import NotAcceptable, UnsupportedMediaType
from modelapp.negotiation import (
    OwnedInputParser,
    OwnedOutputRenderer,
    SageMakerContentNegotiation,
    parse_accept,
)
from modelapp.parsers import BaseBatchParser
from modelapp.renderers import BaseBatchRenderer

MEDIA_TYPES = [
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-npy",
]


def smserve(**extra):
    return override_settings(SMSERVE={**settings.SMSERVE, **extra})


def request(content_type: str | None = "text/csv", accept: str | None = None):
    """A POST to /invocations as DRF's view sees it; None leaves the header out."""
    django_request = APIRequestFactory().generic(
        "POST", "/invocations", b"1,2\n", content_type=content_type or ""
    )
    if content_type is None:
        django_request.META.pop("CONTENT_TYPE", None)
    if accept is not None:
        django_request.META["HTTP_ACCEPT"] = accept
    return Request(django_request)


def parsers() -> list:
    return [cls() for cls in conf.import_classes("PARSERS", BaseBatchParser)]


def renderers() -> list:
    return [cls() for cls in conf.import_classes("RENDERERS", BaseBatchRenderer)]


def select_parser(req: Request):
    return SageMakerContentNegotiation().select_parser(req, parsers())


def select_renderer(req: Request) -> tuple:
    renderer, media_type = SageMakerContentNegotiation().select_renderer(
        req, renderers()
    )
    return renderer.media_type, media_type


# --- parse_accept ----------------------------------------------------------------------
def test_parse_accept_orders_by_quality_then_specificity():
    assert parse_accept("text/csv;q=0.5, application/json, */*;q=0.1, text/*") == [
        "application/json",
        "text/*",
        "text/csv",
        "*/*",
    ]
    assert parse_accept("text/csv;q=0") == []


# --- the parser, from Content-Type ------------------------------------------------------
@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_content_type_picks_its_parser(media_type):
    """Each supported Content-Type is read by the parser of that media type."""
    assert select_parser(request(media_type)).media_type == media_type


@pytest.mark.parametrize(
    "content_type", ["Text/CSV", "text/csv; charset=utf-8", "text/csv;header=present"]
)
def test_content_type_parameters_and_case_do_not_matter(content_type):
    """Only the media type picks the parser: parameters and case are ignored."""
    assert select_parser(request(content_type)).media_type == "text/csv"


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_absent_or_generic_content_type_is_the_default(content_type):
    """No Content-Type, or application/octet-stream, means DEFAULT_CONTENT_TYPE: CSV
    unless configured otherwise."""
    assert select_parser(request(content_type)).media_type == "text/csv"
    with smserve(DEFAULT_CONTENT_TYPE="application/json"):
        assert select_parser(request(content_type)).media_type == "application/json"


def test_unknown_content_type_is_unsupported():
    """A Content-Type no parser reads is a 415 that names the supported types."""
    with pytest.raises(UnsupportedMediaType, match="'image/png' is not supported") as e:
        select_parser(request("image/png"))
    assert e.value.get_codes() == "unsupported_media_type"
    assert ", ".join(MEDIA_TYPES) in str(e.value.detail)


@pytest.mark.parametrize(
    ("alias", "media_type"),
    [
        ("application/x-jsonlines", "application/jsonlines"),
        ("application/x-ndjson", "application/jsonlines"),
        ("application/csv", "text/csv"),
    ],
)
def test_an_alias_picks_the_parser_of_its_media_type(alias, media_type):
    """Aliases (``formats.ALIASES``) are read by the parser of the type they stand for."""
    assert select_parser(request(alias)).media_type == media_type


def test_owned_input_takes_any_content_type():
    """A predictor that owns its input gets the raw body whatever the Content-Type."""
    negotiation = SageMakerContentNegotiation()
    parser = OwnedInputParser()
    for content_type in ("text/plain", "image/png", None):
        assert negotiation.select_parser(request(content_type), [parser]) is parser


# --- the renderer, from Accept ----------------------------------------------------------
@pytest.mark.parametrize("accept", [None, "*/*", "", "  "])
@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_absent_or_any_accept_answers_in_the_request_type(media_type, accept):
    """No Accept, or */*, answers in the request's own type when a renderer has it."""
    assert select_renderer(request(media_type, accept)) == (media_type, media_type)


def test_absent_accept_for_a_type_without_renderer_is_json():
    """A request type no renderer writes is answered in JSON."""
    assert select_renderer(request("text/tab-separated-values")) == (
        "application/json",
        "application/json",
    )


@pytest.mark.parametrize("accept", [None, "*/*"])
def test_default_accept_setting_wins_over_the_request_type(accept):
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT answers requests without Accept (or */*);
    its parameters are ignored."""
    with smserve(DEFAULT_ACCEPT="application/jsonlines; charset=utf-8"):
        assert select_renderer(request("text/csv", accept)) == (
            "application/jsonlines",
            "application/jsonlines",
        )


def test_default_accept_does_not_override_an_explicit_accept():
    with smserve(DEFAULT_ACCEPT="application/jsonlines"):
        assert select_renderer(request("text/csv", "text/csv"))[1] == "text/csv"


@pytest.mark.parametrize(
    ("content_type", "accept", "expected"),
    [
        ("text/csv", "text/csv;q=0.5, application/json", "application/json"),
        ("application/json", "text/html, text/csv;q=0.9", "text/csv"),
        ("application/json", "text/html, */*;q=0.1", "application/json"),
        ("text/csv", "text/html, */*;q=0.1", "text/csv"),
        ("application/json", "application/*", "application/json"),
        ("text/csv", "text/*", "text/csv"),
        ("text/csv", "APPLICATION/X-NPY", "application/x-npy"),
        (
            "text/csv",
            "application/x-npy;q=0, application/json;q=0.2",
            "application/json",
        ),
    ],
)
def test_accept_list_goes_by_quality(content_type, accept, expected):
    """The best supported entry of the Accept list, by q-value (q=0 is never chosen);
    a range answers with the concrete type of the renderer it matches."""
    assert select_renderer(request(content_type, accept)) == (expected, expected)


@pytest.mark.parametrize(
    ("accept", "renderer"),
    [
        ("application/parquet", "application/x-parquet"),
        ("application/vnd.apache.parquet;q=0.9, image/png", "application/x-parquet"),
        ("application/x-ndjson", "application/jsonlines"),
        ("text/plain", "text/csv"),
    ],
)
def test_an_alias_in_accept_is_answered_under_its_own_name(accept, renderer):
    """The aliases of formats.py (training's names) pick their format's renderer, and
    the answer is named as the client asked."""
    asked = accept.split(";")[0]
    assert select_renderer(request("text/csv", accept)) == (renderer, asked)


@pytest.mark.parametrize("accept", ["text/html", "text/csv;q=0", "image/*"])
def test_unsatisfiable_accept_is_not_acceptable(accept):
    """An Accept no renderer satisfies is a 406 that names the types it could have."""
    with pytest.raises(NotAcceptable, match="cannot be satisfied") as e:
        select_renderer(request("text/csv", accept))
    assert e.value.get_codes() == "not_acceptable"
    answers = "application/json, text/csv, application/jsonlines, application/x-npy"
    assert answers in str(e.value.detail)


@pytest.mark.parametrize(
    ("content_type", "accept", "told"),
    [
        ("text/csv", "text/*, application/x-custom", "application/x-custom"),
        ("text/csv", "image/png;q=0.5, text/plain", "text/plain"),
        ("application/json", "*/*", "application/json"),
        ("text/csv", None, "text/csv"),
    ],
)
def test_owned_output_is_told_the_best_concrete_type(content_type, accept, told):
    """A predictor that owns its output is told the best concrete type asked for, else
    the default (the request's own type)."""
    renderer = OwnedOutputRenderer()
    chosen, media_type = SageMakerContentNegotiation().select_renderer(
        request(content_type, accept), [renderer]
    )
    assert chosen is renderer
    assert media_type == told
