"""Thin DRF views for the SageMaker contract: parse -> registry -> predictor -> Response."""

from __future__ import annotations

import functools
import logging
import time
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelapp import conf, stats
from modelapp.exceptions import InvalidInput, PayloadTooLarge, error_body
from modelapp.negotiation import SageMakerContentNegotiation
from modelapp.registry import registry
from modelapp.renderers import JSONRenderer, dump_json

logger = logging.getLogger("modelapp.invocations")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
# The record count, for nginx's log line (nginx does not pass it on to the client).
RECORDS = "X-Smserve-Records"


def parse_custom_attributes(header: str) -> dict[str, str]:
    """``"method=predict_proba, trace=abc"`` -> dict; tokens without ``=`` are not ours."""
    attributes = {}
    for token in header.replace(";", ",").split(","):
        key, sep, value = token.partition("=")
        if sep and key.strip():
            attributes[key.strip().lower()] = value.strip()
    return attributes


class FirstRendererNegotiation(BaseContentNegotiation):
    """Status endpoints answer JSON whatever the client asks for."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: Any, format_suffix: Any = None
    ) -> Any:
        return renderers[0], renderers[0].media_type


class StatusView(APIView):
    """Base for /ping and /execution-parameters: JSON only, no parsing."""

    parser_classes: list[type] = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation


class PingView(StatusView):
    """``GET /ping``: 200 once the model is loaded and warmed up, else 503 with the reason."""

    def get(self, request: Request) -> Response:
        registry.get()
        return Response({"status": "ready"})


class ExecutionParametersView(StatusView):
    """``GET /execution-parameters``: how batch transform should call this container."""

    def get(self, request: Request) -> Response:
        return Response(
            {
                "MaxConcurrentTransforms": conf.get("WORKERS"),
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": conf.get("MAX_PAYLOAD_MB"),
            }
        )


class InvocationsView(APIView):
    """``POST /invocations``: one prediction per input record, in input order.

    Parsers and renderers come from ``SMSERVE['PARSERS']``/``['RENDERERS']`` unless given
    to ``as_view()``; the negotiation follows SageMaker's rules (``negotiation.py``).
    """

    parser_classes: Any = None
    renderer_classes: Any = None
    content_negotiation_class = SageMakerContentNegotiation

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.parser_classes is None:
            self.parser_classes = conf.parser_classes()
        if self.renderer_classes is None:
            self.renderer_classes = conf.renderer_classes()

    # Per-request work DRF would redo for every invocation, done once: parsers and
    # renderers are stateless, the Allow/Vary headers fixed, and there is no
    # authentication to run eagerly (DRF's documented way to make it lazy).
    def get_parsers(self) -> list[Any]:
        return list(_instances(tuple(self.parser_classes)))

    def get_renderers(self) -> list[Any]:
        return list(_instances(tuple(self.renderer_classes)))

    @property
    def default_response_headers(self) -> dict[str, str]:
        return _default_headers(type(self), len(self.renderer_classes) > 1).copy()

    def perform_authentication(self, request: Request) -> None:
        pass

    def post(self, request: Request) -> HttpResponse:
        predictor = registry.get()
        check_body_size(request)
        attributes = parse_custom_attributes(
            request.META.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES", "")
        )
        method = attributes.get("method") or predictor.default_method
        batch = request.data
        predictions = predictor.predict(batch, method)
        request.records = len(batch)
        headers = {CUSTOM_ATTRIBUTES: f"method={method}"}
        if conf.get("INVOCATION_LOG") == "nginx":
            headers[RECORDS] = str(len(batch))
        return self.rendered(request, predictions, headers)

    def rendered(
        self, request: Request, data: Any, headers: dict[str, str]
    ) -> HttpResponse:
        """``data`` rendered now by the renderer DRF's negotiation chose, in a plain
        ``HttpResponse`` (which DRF views may return): what DRF's ``Response`` would send,
        without its template-response machinery, ~0.025 ms of a one-record invocation.
        Errors still go through DRF's exception handling and ``Response``."""
        renderer = request.accepted_renderer
        media_type = request.accepted_media_type
        body = renderer.render(data, media_type, self.get_renderer_context())
        if renderer.charset:
            media_type = f"{media_type}; charset={renderer.charset}"
            if isinstance(body, str):
                body = body.encode(renderer.charset)
        return HttpResponse(body, content_type=media_type, headers=headers)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        request.started = time.perf_counter()
        request.records = 0
        super().initial(request, *args, **kwargs)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        if getattr(response, "exception", False):
            response.content_type = response.accepted_renderer.error_media_type
        log_invocation(request, response)
        return response


@functools.cache
def _instances(classes: tuple[type, ...]) -> tuple[Any, ...]:
    return tuple(cls() for cls in classes)


@functools.cache
def _default_headers(view: type[APIView], vary: bool) -> dict[str, str]:
    allowed = [m.upper() for m in view.http_method_names if hasattr(view, m)]
    return {"Allow": ", ".join(allowed), **({"Vary": "Accept"} if vary else {})}


def check_body_size(request: Request) -> None:
    """Empty is a 400 (DRF would call it empty data); over the limit is a 413."""
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if length == 0 and not chunked:
        raise InvalidInput(
            "The body is empty: send one or more records (text/csv, application/json, "
            "application/jsonlines or application/x-npy).",
            code="empty_body",
        )
    limit = conf.get("MAX_PAYLOAD_BYTES")
    if limit and length > limit:
        raise PayloadTooLarge(
            f"The body is {length} bytes; the limit is {limit} bytes "
            f"({conf.get('MAX_PAYLOAD_MB')} MB): split the batch."
        )


def log_invocation(request: Request, response: Response) -> None:
    stats.record_invocation(request, response)  # in memory; flushed in the background
    status = response.status_code
    if status < 400 and conf.get("INVOCATION_LOG") == "nginx":
        return  # nginx writes the line
    started = getattr(request, "started", None)
    elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
    level = logging.INFO if status < 500 else logging.ERROR
    if logger.isEnabledFor(level):
        detail = ""
        if status >= 400 and isinstance(response.data, dict):
            detail = f" detail={response.data.get('detail', '')!r}"
        logger.log(
            level,
            "POST /invocations %d records=%d in=%s out=%s bytes_in=%s %.2fms%s",
            status,
            getattr(request, "records", 0),
            request.META.get("CONTENT_TYPE") or "-",
            response_type(response),
            request.META.get("CONTENT_LENGTH") or 0,
            elapsed_ms,
            detail,
        )


def response_type(response: HttpResponseBase) -> str:
    """The Content-Type, also of a DRF ``Response`` not rendered yet (whose header still
    holds Django's text/html default)."""
    if isinstance(response, Response):
        return response.content_type or response.accepted_media_type or "-"
    return response.get("Content-Type", "-")


def _json_error(status: HTTPStatus, detail: str, code: str) -> HttpResponse:
    return HttpResponse(
        dump_json(error_body(detail, code)),
        status=status,
        content_type="application/json",
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Unknown paths answer JSON, never HTML: SageMaker shows the caller this body."""
    return _json_error(
        HTTPStatus.NOT_FOUND,
        f"No endpoint at {request.path}: use POST /invocations or GET /ping.",
        "not_found",
    )


def bad_request(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    return _json_error(HTTPStatus.BAD_REQUEST, "Bad request.", "bad_request")


def permission_denied(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    return _json_error(HTTPStatus.FORBIDDEN, "Permission denied.", "permission_denied")


def server_error(request: HttpRequest) -> HttpResponse:
    """A bug in our code: the traceback is in the log (django.request), not in the body."""
    return _json_error(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "Internal server error: the container's log has the traceback.",
        "server_error",
    )
