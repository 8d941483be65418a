"""One line per invocation, its count in the stats and in the EMF metrics: who writes what.

nginx writes the line of a successful invocation when ``serve`` runs it
(``SMSERVE['INVOCATION_LOG'] == "nginx"``): the view then sends what nginx cannot know in
headers (``nginx_headers``: the record count; with JSON logs also the model and the
engine), which nginx logs and hides from the client. The app writes the line of every
error (with its detail), and of every invocation when it runs without nginx.
``smserve/fastpaths.py`` describes this protocol with the rest of nginx <-> app.

With ``SMSERVE_LOG_FORMAT=json`` each invocation has exactly one line: the app tells nginx
that it wrote one (``LOGGED_HEADER``), and nginx then writes none. The text format keeps
nginx's line for every invocation, and the app's second line for an error. The line's
fields (``invocation_fields``) are the same whoever writes it; ``docs/logs.md`` lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response

from modelapp import conf, stats
from modelapp.text import LOGGED_DETAIL, brief, cut, printable
from smserve.logs import FIELDS

logger = logging.getLogger("modelapp.invocations")

# What the app tells nginx for its log line (nginx does not pass them on to the client).
RECORDS_HEADER = "X-Smserve-Records"
MODEL_HEADER = "X-Smserve-Model"
SHA256_HEADER = "X-Smserve-Model-Sha256"
ENGINE_HEADER = "X-Smserve-Engine"
# The app has written this invocation's line itself (JSON logs: nginx writes none).
LOGGED_HEADER = "X-Smserve-Logged"
# SageMaker's id of the invocation, as the caller sent it (InvokeEndpoint's InferenceId).
INFERENCE_ID_META = "HTTP_X_AMZN_SAGEMAKER_INFERENCE_ID"
# SageMaker's ids have at most 64 characters; a longer value is cut, not dropped.
INFERENCE_ID_MAX = 256
# Hex digits of the model's checksum in a line: enough to tell the models apart.
SHA256_PREFIX = 12
TEXT_LINE = "%s %s %d records=%d in=%s out=%s bytes_in=%s %.2fms%s%s"


def log_invocation(request: Request, response: Response) -> None:
    """Count the invocation (in memory, flushed in the background), for the EMF metrics
    too when they are on, and log its line unless nginx does."""
    stats.record_invocation(request, response)
    emf_on = conf.get("METRICS_EMF")
    status = response.status_code
    level = logging.INFO if status < 500 else logging.ERROR
    nginx_logs = conf.get("INVOCATION_LOG") == "nginx"
    log_it = not (status < 400 and nginx_logs) and logger.isEnabledFor(level)
    if not (log_it or emf_on):
        return
    if log_it and nginx_logs and conf.get("LOG_FORMAT") == "json":
        response[LOGGED_HEADER] = "1"

    def finish(rendered: HttpResponseBase) -> None:
        started = getattr(request, "started", None)
        elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        fields = invocation_fields(request, rendered, elapsed_ms)
        if emf_on:
            from modelapp.emf import metrics

            metrics.count(fields)
        if log_it:
            _log_line(level, request, rendered, fields)

    after_render(response, finish)


def _log_line(
    level: int, request: Request, response: HttpResponseBase, fields: dict[str, Any]
) -> None:
    detail = ""
    data = getattr(response, "data", None)
    if "detail" in fields and isinstance(data, dict):
        # Capped: a detail may quote the caller's input.
        detail = f" detail={brief(data.get('detail', ''), LOGGED_DETAIL)}"
    inference_id = ""
    if fields["inference_id"]:
        inference_id = f" inference_id={printable(fields['inference_id'])}"
    logger.log(
        level,
        TEXT_LINE,
        request.method,
        # Percent-decoded: %0A would start a line of the caller's making.
        fields["path"],
        fields["status"],
        fields["records"],
        printable(request.META.get("CONTENT_TYPE") or "-"),
        fields["response_type"],
        request.META.get("CONTENT_LENGTH") or 0,
        fields["duration_ms"],
        inference_id,
        detail,
        extra={FIELDS: fields},
    )


def invocation_fields(
    request: Request, response: HttpResponseBase, elapsed_ms: float
) -> dict[str, Any]:
    """The fields of an invocation's line (and of its EMF count), as the app sees it."""
    data = getattr(response, "data", None)
    code = ""
    detail = None
    if response.status_code >= 400 and isinstance(data, dict):
        code = str(data.get("code", ""))
        detail = data.get("detail", "")
    sha256 = getattr(request, "model_sha256", None) or ""
    fields: dict[str, Any] = {
        "method": request.method,
        "path": printable(request.path),
        "status": response.status_code,
        "code": code,
        "records": getattr(request, "records", 0),
        "content_type": request.META.get("CONTENT_TYPE") or "",
        "response_type": response_type(response),
        "bytes_in": int(request.META.get("CONTENT_LENGTH") or 0),
        "bytes_out": len(getattr(response, "content", b"") or b""),
        "duration_ms": round(elapsed_ms, 2),
        "model": getattr(request, "model_name", "") or "",
        "model_sha256": sha256[:SHA256_PREFIX],
        "engine": getattr(request, "engine", "") or "",
        "inference_id": inference_id(request),
    }
    if detail is not None:
        # Capped: a detail may quote the caller's input.
        fields["detail"] = cut(str(detail), LOGGED_DETAIL)
    return fields


def inference_id(request: Request) -> str:
    """SageMaker's ``X-Amzn-SageMaker-Inference-Id`` as sent ("" when it is not)."""
    return cut(request.META.get(INFERENCE_ID_META, ""), INFERENCE_ID_MAX)


def engine_of(predictor: Any, method: str, records: int) -> str:
    """Which engine answered ``method`` for ``records`` records: the compiled engine's
    report says per method (a batch above its crossover goes to scikit-learn); a kind
    without one (a user's script) is ``script``."""
    report = getattr(predictor, "engine_report", None)
    if report is None:
        return "script"
    engine = report.methods.get(method, "")
    if report.max_records is not None and records > report.max_records:
        from modelapp.predictors.compiled import SKLEARN

        return SKLEARN
    return engine


def nginx_headers(request: Request, records: int, sha256: str | None) -> dict[str, str]:
    """What nginx logs of a successful invocation and cannot know itself (module doc)."""
    headers = {RECORDS_HEADER: str(records)}
    if conf.get("LOG_FORMAT") == "json":
        headers[MODEL_HEADER] = getattr(request, "model_name", "") or ""
        headers[SHA256_HEADER] = (sha256 or "")[:SHA256_PREFIX]
        headers[ENGINE_HEADER] = getattr(request, "engine", "") or ""
    return headers


def after_render(
    response: HttpResponseBase, callback: Callable[[HttpResponseBase], None]
) -> None:
    """``callback(response)`` once its body exists (a DRF ``Response`` renders after the
    view returns; a plain ``HttpResponse`` has its body already)."""
    if hasattr(response, "add_post_render_callback"):
        response.add_post_render_callback(callback)
    else:
        callback(response)


def response_type(response: HttpResponseBase) -> str:
    """The Content-Type, also of a DRF ``Response`` not rendered yet (whose header still
    holds Django's text/html default)."""
    if isinstance(response, Response):
        return response.content_type or response.accepted_media_type or "-"
    return response.get("Content-Type", "-")
