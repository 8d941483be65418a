"""One line per invocation, and its count in the stats: who writes what.

nginx writes the line of a successful invocation when ``serve`` runs it
(``SMSERVE['INVOCATION_LOG'] == "nginx"``): the view then sends the record count in
``RECORDS_HEADER``, which nginx logs and hides from the client. The app writes the line
of every error (with its detail), and of every invocation when it runs without nginx.
``smserve/fastpaths.py`` describes this protocol with the rest of nginx <-> app.
"""

from __future__ import annotations

import logging
import time

from django.http import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response

from modelapp import conf, stats
from modelapp.text import LOGGED_DETAIL, brief, printable

logger = logging.getLogger("modelapp.invocations")

# The record count, for nginx's log line (nginx does not pass it on to the client).
RECORDS_HEADER = "X-Smserve-Records"


def log_invocation(request: Request, response: Response) -> None:
    """Count the invocation (in memory, flushed in the background) and log its line
    unless nginx does."""
    stats.record_invocation(request, response)
    status = response.status_code
    if status < 400 and conf.get("INVOCATION_LOG") == "nginx":
        return  # nginx writes the line
    started = getattr(request, "started", None)
    elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
    level = logging.INFO if status < 500 else logging.ERROR
    if logger.isEnabledFor(level):
        detail = ""
        if status >= 400 and isinstance(response.data, dict):
            # Capped: a detail may quote the caller's input.
            detail = f" detail={brief(response.data.get('detail', ''), LOGGED_DETAIL)}"
        logger.log(
            level,
            "%s %s %d records=%d in=%s out=%s bytes_in=%s %.2fms%s",
            request.method,
            # Percent-decoded: %0A would start a line of the caller's making.
            printable(request.path),
            status,
            getattr(request, "records", 0),
            printable(request.META.get("CONTENT_TYPE") or "-"),
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
