"""HTTP errors of the inference contract, one ``APIException`` per meaning, and the handler.

Every error body is ``{"detail": "...", "code": "..."}``, rendered in the negotiated format.
The handler answers only for errors it knows; anything else stays a 500 with a traceback.
With ``SMSERVE['DETAILED_ERRORS']`` off, the reasons that quote the container (load
failures, the exceptions of an inference script) stay in the log and callers get a
generic one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

from modelapp import conf
from modelapp.text import DETAIL, LOGGED_DETAIL, brief, cut

logger = logging.getLogger(__name__)


class InvalidInput(exceptions.APIException):
    """The body could not be turned into a batch the model accepts (400)."""

    status_code = HTTPStatus.BAD_REQUEST
    default_detail = "The request body is not a valid batch."
    default_code = "invalid_input"


class UnsupportedMediaType(exceptions.APIException):
    """No parser reads this Content-Type (415)."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    default_code = "unsupported_media_type"

    def __init__(self, media_type: str, supported: Iterable[str]) -> None:
        super().__init__(
            f"Content-Type {brief(media_type)} is not supported; "
            f"send one of: {', '.join(supported)}."
        )


class NotAcceptable(exceptions.APIException):
    """No renderer satisfies the Accept header (406)."""

    status_code = HTTPStatus.NOT_ACCEPTABLE
    default_code = "not_acceptable"

    def __init__(self, accept: str, supported: Iterable[str]) -> None:
        super().__init__(
            f"Accept {brief(accept)} cannot be satisfied; this endpoint answers with: "
            f"{', '.join(supported)}."
        )


class PayloadTooLarge(exceptions.APIException):
    """The body is over the payload limit (413); nginx says the same before Django does."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class ModelNotReady(exceptions.APIException):
    """No model is loaded, or it failed its warm-up (503)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    default_detail = "The model is not loaded."
    default_code = "model_not_ready"


class ModelNotFound(exceptions.APIException):
    """Multi-model mode: no model is loaded under this name (404)."""

    status_code = HTTPStatus.NOT_FOUND
    default_detail = "No model is loaded under this name."
    default_code = "model_not_found"


class ModelAlreadyLoaded(exceptions.APIException):
    """Multi-model mode: a model is loaded under this name already (409)."""

    status_code = HTTPStatus.CONFLICT
    default_detail = "A model is loaded under this name already."
    default_code = "model_already_loaded"


class ModelLoadFailed(exceptions.APIException):
    """Multi-model mode: the artifact at the url is missing, corrupt or cannot
    predict (400); the detail says which."""

    status_code = HTTPStatus.BAD_REQUEST
    default_detail = "The model could not be loaded."
    default_code = "model_load_failed"


class InsufficientMemory(exceptions.APIException):
    """Multi-model mode: the model does not fit in the memory budget (507); SageMaker
    then unloads idle models and retries."""

    status_code = HTTPStatus.INSUFFICIENT_STORAGE
    default_detail = "Not enough memory to load the model."
    default_code = "insufficient_memory"


def error_body(detail: Any, code: str) -> dict[str, str]:
    """The one error shape: fields may be added over time, never removed or retyped."""
    if isinstance(detail, (list, dict)):
        detail = "; ".join(
            str(d) for d in (detail.values() if isinstance(detail, dict) else detail)
        )
    return {"detail": cut(str(detail), DETAIL), "code": str(code)}


# What callers are told instead when SMSERVE['DETAILED_ERRORS'] is off, by code; a
# script's error keeps its message when the script gave it a status of its own.
WITHHELD = {
    "model_not_ready": "The model is not loaded: the container's log says why.",
    "model_load_failed": "The model could not be loaded: the container's log says why.",
    "script_error": (
        "The inference script raised an error: the container's log has the traceback."
    ),
}


def _withheld(exc: exceptions.APIException, code: str) -> str | None:
    """The generic reason that replaces ``exc``'s detail, or None to keep it."""
    if conf.get("DETAILED_ERRORS") or code not in WITHHELD:
        return None
    if code == "script_error" and exc.status_code != HTTPStatus.INTERNAL_SERVER_ERROR:
        return None
    return WITHHELD[code]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped: known errors get our body; unknown ones return None (500)."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    code = exc.get_codes() if isinstance(exc.detail, str) else exc.default_code
    if not isinstance(code, str):
        code = exc.default_code
    detail = exc.detail
    withheld = _withheld(exc, code)
    if withheld is not None:
        # A load failure was logged where it happened; a /ping 503 repeats it.
        level = logging.INFO if code == "model_not_ready" else logging.WARNING
        logger.log(
            level,
            "Withheld from the caller (%s): %s",
            code,
            brief(detail, LOGGED_DETAIL),
        )
        detail = withheld
    return Response(error_body(detail, code), status=exc.status_code, headers=headers)
