"""Thin DRF views for the SageMaker contract: registry -> parse -> predictor -> render.

``InvocationsView`` resolves its predictor through one hook (``get_predictor``) before
DRF negotiates, so a predictor kind that owns its input or output changes what is
negotiated, and a view for a named model (``/models/<name>/invoke``) is the same view
with another ``get_predictor``. The work itself is ``predictor.invoke()``, plain Python.
"""

from __future__ import annotations

import base64
import functools
import time
from http import HTTPStatus
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelapp import capture_files, conf, multimodel, observers, openapi
from modelapp.batch import KeyedPredictions
from modelapp.exceptions import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    error_body,
)
from modelapp.formats import CUSTOM_ATTRIBUTES
from modelapp.invocation_log import engine_of, log_invocation, nginx_headers
from modelapp.negotiation import (
    FirstRendererNegotiation,
    OwnedInputParser,
    OwnedOutputRenderer,
    SageMakerContentNegotiation,
)
from modelapp.outputs import OutputNotRenderable
from modelapp.parsers import BaseBatchParser
from modelapp.registry import DEFAULT_MODEL, registry
from modelapp.renderers import BaseBatchRenderer, JSONRenderer, dump_json
from modelapp.text import brief, has_control


def parse_custom_attributes(header: str) -> dict[str, str]:
    """``"method=predict_proba, trace=abc"`` -> dict; tokens without ``=`` are not ours."""
    attributes = {}
    for token in header.replace(";", ",").split(","):
        key, sep, value = token.partition("=")
        if sep and key.strip():
            attributes[key.strip().lower()] = value.strip()
    return attributes


class StatusView(APIView):
    """Base for /ping and /execution-parameters: JSON only, no parsing."""

    parser_classes: list[type] = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation
    inference = True


class PingView(StatusView):
    """``GET /ping``: 200 once the model is loaded and warmed up, else 503 with the reason."""

    @extend_schema(
        operation_id="ping",
        tags=["serving"],
        summary="Health check",
        description=(
            "200 once the model is loaded and warmed up (nginx answers from the ready "
            "file, so health checks never queue behind invocations); in a multi-model "
            "container, 200 as soon as the server is up. Otherwise 503 with the reason."
        ),
        responses={
            200: openapi.ok(
                openapi.PingSerializer,
                "Ready for invocations (a multi-model server: alive).",
            ),
            503: openapi.error(
                "The model is not loaded, or failed its warm-up (`model_not_ready`, "
                "the detail says why). " + openapi.UNAVAILABLE
            ),
        },
    )
    def get(self, request: Request) -> Response:
        if multimodel.enabled():
            # A model that fails to load fails only its own load (SageMaker's MME contract).
            return Response({"status": "alive"})
        registry.get()
        return Response({"status": "ready"})

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, ModelNotReady):
            # The reason is logged when it changes and once a minute while it lasts
            # (the registry), not as one django.request ERROR per health check: the
            # 503's body says it to every caller.
            registry.remind_not_ready()
            response._has_been_logged = True
        return response


class ExecutionParametersView(StatusView):
    """``GET /execution-parameters``: how batch transform should call this container."""

    @extend_schema(
        operation_id="executionParameters",
        tags=["serving"],
        summary="Batch transform parameters",
        description="How SageMaker batch transform should call this container.",
        responses={
            200: openapi.ok(openapi.ExecutionParametersSerializer, "The parameters."),
            503: openapi.error(openapi.UNAVAILABLE),
        },
    )
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
    to ``as_view()``; the negotiation follows SageMaker's rules (``negotiation.py``). A
    predictor that owns its input gets the raw body whatever its Content-Type; one that
    owns its output answers whatever the Accept.
    """

    parser_classes: Any = None
    renderer_classes: Any = None
    content_negotiation_class = SageMakerContentNegotiation
    # The OpenAPI description of its bodies comes from the configured formats.
    schema = openapi.BatchSchema()
    # InferenceMiddleware calls views marked so without the admin's middleware layers.
    inference = True
    model_name = DEFAULT_MODEL

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.parser_classes is None:
            self.parser_classes = conf.import_classes("PARSERS", BaseBatchParser)
        if self.renderer_classes is None:
            self.renderer_classes = conf.import_classes("RENDERERS", BaseBatchRenderer)
        self.predictor: Any = None
        self._predictor_error: Exception | None = None

    def get_predictor(self, request: Request, **kwargs: Any) -> Any:
        """The predictor this request goes to (503 while it is not ready); a 404 in a
        multi-model container, which has no default model to become ready (a 503 would
        tell the caller to retry)."""
        if multimodel.enabled():
            raise ModelNotFound(
                "This is a multi-model container (SAGEMAKER_MULTI_MODEL=true): invoke "
                "a loaded model with POST /models/<name>/invoke.",
                code="multi_model",
            )
        return registry.get(self.model_name)

    # Per-request work DRF would redo for every invocation, done once: parsers and
    # renderers are stateless, the Allow/Vary headers fixed, and there is no
    # authentication to run eagerly (DRF's documented way to make it lazy).
    def get_parsers(self) -> list[Any]:
        return list(_instances(tuple(self.parser_classes)))

    def get_renderers(self) -> list[Any]:
        if self.predictor is not None and self.predictor.owns_output:
            renderer = OwnedOutputRenderer()
            renderer.follows_content_type = self.predictor.accept_follows_content_type
            return [renderer]
        return list(_instances(tuple(self.renderer_classes)))

    @property
    def default_response_headers(self) -> dict[str, str]:
        # A class is hashable; mypy reads DRF's untyped base as lacking __hash__.
        view: Any = type(self)
        return _default_headers(view, len(self.renderer_classes) > 1).copy()

    def perform_authentication(self, request: Request) -> None:
        pass

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if observers.sink is None:
            return super().dispatch(request, *args, **kwargs)
        try:
            return super().dispatch(request, *args, **kwargs)
        except Exception:
            # A bug: Django answers the 500 (server_error); the metrics count it here.
            observers.sink.failed()
            raise

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        request.started = time.perf_counter()
        request.records = 0
        request.model_sha256 = None
        request.prediction_method = ""
        if observers.sink is not None:
            observers.sink.started()
        request.model_name = kwargs.get("name", self.model_name)
        request.engine = ""
        # The predictor is known before negotiation, which may depend on it; a model
        # that is not ready answers 503 from post(), after negotiation, as it always has.
        try:
            self.predictor = self.get_predictor(request, **kwargs)
        except APIException as exc:
            self._predictor_error = exc
        else:
            if self.predictor.owns_input:
                request.parsers = [OwnedInputParser()]
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="invoke",
        tags=["serving"],
        summary="Predict",
        description=(
            "One prediction per input record, in input order. The Content-Type picks "
            "the parser (absent or `application/octet-stream`: "
            "SMSERVE_DEFAULT_CONTENT_TYPE, `text/csv` unless set); the Accept header "
            "picks the response format, by q-value. Errors are `{detail, code}` in "
            "the negotiated format (CSV: the detail as one line). A script-mode model "
            "(`inference.py`) reads any Content-Type and answers whatever its "
            "`output_fn` returns."
        ),
        parameters=[
            openapi.CUSTOM_ATTRIBUTES_REQUEST,
            openapi.CUSTOM_ATTRIBUTES_RESPONSE,
        ],
        examples=openapi.BATCH_EXAMPLES,
    )
    def post(self, request: Request, **kwargs: Any) -> HttpResponse:
        if self._predictor_error is not None:
            raise self._predictor_error
        predictor = self.predictor
        check_body_size(request)
        attributes = parse_custom_attributes(
            request.META.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES", "")
        )
        extra = {"headers": request.headers} if predictor.wants_headers else {}
        request.data_capture = capture_files.take(request)  # the body, if sampled
        data = request.data
        # The phases' ends, for the metrics (a chunked body is parsed while predicted).
        request.parsed_at = time.perf_counter()
        result = predictor.invoke(
            data,
            attributes,
            request.content_type or "",
            request.accepted_media_type,
            **extra,
        )
        request.predicted_at = time.perf_counter()
        request.records = result.records
        request.prediction_method = result.method
        request.engine = engine_of(predictor, result.method, result.records)
        headers = {
            CUSTOM_ATTRIBUTES: f"method={result.method}",
            **(result.headers or {}),
        }
        if conf.get("INVOCATION_LOG") == "nginx":
            headers.update(nginx_headers(request, result.records, self.model_sha256()))
        if result.body is not None:
            return HttpResponse(
                result.body,
                content_type=result.content_type,
                status=result.status,
                headers=headers,
            )
        return self.render_response(request, result.predictions, headers)

    def render_response(
        self, request: Request, data: Any, headers: dict[str, str]
    ) -> HttpResponse:
        """``data`` rendered now by the renderer DRF's negotiation chose, in a plain
        ``HttpResponse`` (which DRF views may return): what DRF's ``Response`` would send,
        without its template-response machinery (``smserve/fastpaths.py``). Errors still go
        through DRF's exception handling and ``Response``."""
        renderer = request.accepted_renderer
        if isinstance(data, KeyedPredictions):
            refusal = renderer.keyed_refusal(data)
            if refusal:
                raise OutputNotRenderable(refusal)
        if not conf.fast_path("plain_response"):
            return Response(data, headers=headers)
        media_type = request.accepted_media_type
        body = renderer.render(data, media_type, self.get_renderer_context())
        if renderer.charset:
            media_type = f"{media_type}; charset={renderer.charset}"
            if isinstance(body, str):
                body = body.encode(renderer.charset)
        return HttpResponse(body, content_type=media_type, headers=headers)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        if getattr(response, "exception", False):
            response.content_type = response.accepted_renderer.error_media_type
        request.model_sha256 = self.model_sha256()
        request.served_model = self.served_model_name()
        capture_files.offer(request, response)
        log_invocation(request, response)
        return response

    def model_sha256(self) -> str | None:
        """The checksum of the model that answered, for the stats."""
        loaded = registry.loaded_model(self.model_name)
        return loaded.sha256 if loaded is not None else None

    def served_model_name(self) -> str:
        """The name of the model that answered, for the metrics ("": none did)."""
        return self.model_name if self.predictor is not None else ""


# --- multi-model endpoints: SageMaker's model API (modelapp/multimodel.py) ---------------
MODELS_PAGE_SIZE = 100


def require_multi_model() -> None:
    if not multimodel.enabled():
        raise ModelNotFound(
            "This container serves one model (POST /invocations); the /models API "
            "needs SAGEMAKER_MULTI_MODEL=true.",
            code="not_multi_model",
        )


def describe_model(registration: multimodel.Registration) -> dict[str, Any]:
    return {"modelName": registration.name, "modelUrl": registration.url}


class ModelsView(StatusView):
    """``GET /models``: the loaded models, a page at a time (``next_page_token``);
    ``POST /models`` ``{"model_name", "url"}``: load one for every worker."""

    @extend_schema(
        operation_id="listModels",
        tags=["multi-model"],
        summary="List the loaded models",
        description="The loaded models by name, a page at a time.",
        parameters=[
            OpenApiParameter(
                "next_page_token",
                description="The nextPageToken of the previous page.",
            ),
            OpenApiParameter(
                "limit",
                int,
                description=f"Models per page (default {MODELS_PAGE_SIZE}).",
            ),
        ],
        responses={
            200: openapi.ok(openapi.ModelListSerializer, "A page of models."),
            400: openapi.error(
                "A next_page_token this container did not give "
                "(`invalid_page_token`), or a limit that is not a positive whole "
                "number (`invalid_limit`)."
            ),
            404: openapi.error(openapi.NOT_MULTI_MODEL),
            503: openapi.error(openapi.UNAVAILABLE),
        },
    )
    def get(self, request: Request) -> Response:
        require_multi_model()
        models = multimodel.worker_models().shared.all()
        after = _page_token(request.query_params.get("next_page_token"))
        limit = _page_size(request.query_params.get("limit"))
        if after is not None:
            models = [m for m in models if m.name > after]
        page = models[:limit]
        body: dict[str, Any] = {"models": [describe_model(m) for m in page]}
        if len(models) > limit:
            body["nextPageToken"] = _encode_token(page[-1].name)
        return Response(body)

    @extend_schema(
        operation_id="loadModel",
        tags=["multi-model"],
        summary="Load a model",
        description=(
            "Load the model in the directory `url` under `model_name`, for every "
            "worker. The body is read as JSON whatever its Content-Type."
        ),
        request={"application/json": openapi.LoadRequestSerializer},
        parameters=[openapi.TARGET_MODEL],
        responses={
            200: openapi.ok(
                openapi.ModelStatusSerializer, "Loaded: every worker serves it."
            ),
            400: openapi.error(
                "The body is not `{model_name, url}`, a name or url holds a control "
                "character, or the url is outside SMSERVE_MME_MODEL_ROOT "
                "(`invalid_load_request`); or the directory holds no model that "
                "loads and predicts (`model_load_failed`, the detail says why)."
            ),
            404: openapi.error(openapi.NOT_MULTI_MODEL),
            409: openapi.error(
                "A model is loaded under this name already (`model_already_loaded`)."
            ),
            503: openapi.error(openapi.UNAVAILABLE),
            507: openapi.error(
                "The model does not fit in the memory left for models "
                "(`insufficient_memory`): SageMaker unloads idle models and retries."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        require_multi_model()
        name, url = _load_request(request.body)
        registration = multimodel.worker_models().load(
            name, url, request.META.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL", "")
        )
        return Response({**describe_model(registration), "status": "loaded"})


class ModelView(StatusView):
    """``GET /models/<name>``: one loaded model; ``DELETE``: unload it, answered once
    every worker has given its memory back."""

    @extend_schema(
        operation_id="describeModel",
        tags=["multi-model"],
        summary="Describe a loaded model",
        description="The model loaded under `name`.",
        parameters=[openapi.MODEL_NAME],
        responses={
            200: openapi.ok(openapi.ModelSerializer, "The model."),
            404: openapi.error(openapi.MODEL_NOT_FOUND),
            503: openapi.error(openapi.UNAVAILABLE),
        },
    )
    def get(self, request: Request, name: str) -> Response:
        require_multi_model()
        registration = multimodel.worker_models().shared.get(name)
        if registration is None:
            raise ModelNotFound(f"No model is loaded under the name {brief(name)}.")
        return Response(describe_model(registration))

    @extend_schema(
        operation_id="unloadModel",
        tags=["multi-model"],
        summary="Unload a model",
        description="Answered once every worker has given the model's memory back.",
        parameters=[openapi.MODEL_NAME],
        responses={
            200: openapi.ok(
                openapi.ModelStatusSerializer, "Unloaded from every worker."
            ),
            404: openapi.error(openapi.MODEL_NOT_FOUND),
            503: openapi.error(openapi.UNAVAILABLE),
        },
    )
    def delete(self, request: Request, name: str) -> Response:
        require_multi_model()
        registration = multimodel.worker_models().unload(name)
        return Response({**describe_model(registration), "status": "unloaded"})


@extend_schema_view(
    post=extend_schema(
        operation_id="invokeModel",
        tags=["multi-model"],
        summary="Predict with a loaded model",
        description=(
            "`POST /invocations` for the model loaded under `name`: the same "
            "formats, negotiation, headers and errors, and 404 for a name that is not "
            "loaded."
        ),
        parameters=[openapi.MODEL_NAME],
    )
)
class ModelInvokeView(InvocationsView):
    """``POST /models/<name>/invoke``: ``/invocations`` for one of the loaded models."""

    schema = openapi.ModelBatchSchema()
    loaded_model: Any = None

    def get_predictor(self, request: Request, **kwargs: Any) -> Any:
        """The worker's copy of the named model (404 when it is not loaded)."""
        require_multi_model()
        self.loaded_model = multimodel.worker_models().get(kwargs["name"])
        return self.loaded_model.predictor

    def model_sha256(self) -> str | None:
        return self.loaded_model.sha256 if self.loaded_model is not None else None

    def served_model_name(self) -> str:
        # Only a loaded model's name: any other is the caller's, and unbounded.
        return str(self.kwargs["name"]) if self.loaded_model is not None else ""

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        # The response keeps the view (renderer context): let go of the model, so an
        # unload frees its memory without waiting for the garbage collector.
        self.predictor = self.loaded_model = None
        return response


def _load_request(body: bytes) -> tuple[str, str]:
    try:
        # orjson, as for /invocations: its depth limit makes deep nesting a 400 (the
        # stdlib's json raised RecursionError, a 500).
        data = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"The load request is not JSON ({exc}).", code="invalid_load_request"
        ) from exc
    fields: list[Any] = [
        data.get(k) if isinstance(data, dict) else None for k in _LOAD_FIELDS
    ]
    if not all(isinstance(f, str) and f for f in fields):
        raise InvalidInput(
            'Send {"model_name": "<name>", "url": "<model directory>"}.',
            code="invalid_load_request",
        )
    if not all(_is_text(f) for f in fields):
        # Neither is a file name, a registry key or a database value, nor may it break
        # a log line.
        raise InvalidInput(
            "model_name and url must be text without control characters (\\n, "
            "\\u0000) or unpaired surrogates (\\ud800).",
            code="invalid_load_request",
        )
    return fields[0], fields[1]


def _is_text(value: str) -> bool:
    """No control character, and encodable as UTF-8 (JSON may hold an unpaired
    surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return not has_control(value)


_LOAD_FIELDS = ("model_name", "url")


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _page_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        return base64.b64decode(token, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError) as exc:
        raise InvalidInput(
            f"next_page_token {brief(token)} is not one this container gave.",
            code="invalid_page_token",
        ) from exc


def _page_size(limit: str | None) -> int:
    if not limit:
        return MODELS_PAGE_SIZE
    if not limit.isdigit() or int(limit) < 1:
        raise InvalidInput(
            f"limit must be a positive whole number, got {brief(limit)}.",
            code="invalid_limit",
        )
    return int(limit)


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
    limit = conf.max_payload_bytes()
    if limit and length > limit:
        raise PayloadTooLarge(
            f"The body is {length} bytes; the limit is {limit} bytes "
            f"({conf.get('MAX_PAYLOAD_MB')} MB): split the batch."
        )


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
        f"No endpoint at {brief(request.path)}: use POST /invocations or GET /ping.",
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
