"""The inference views' short cut through the middleware.

Views marked ``inference = True`` (``/invocations``, ``/ping``, ``/execution-parameters``)
use no session, user, CSRF token (DRF views are CSRF-exempt) or message: the session,
auth, messages and CSRF layers only cost them time (``smserve/fastpaths.py``, trick
``inference_middleware``). ``InferenceMiddleware`` sits right after
``SecurityMiddleware`` (whose headers every response keeps) and calls those views itself;
every other path, the admin included, takes the full chain. The URLconf stays the one
list of paths: the mark is on the view.

Every answer that is not the admin's carries ``INFERENCE_CSP``: the admin shares the
inference API's origin, and a script's ``output_fn`` chooses its own Content-Type (even
``text/html``), so no such answer may run a script or load anything as a page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

from modelapp import conf

# Paths remembered with their match (or None: not an inference view); beyond this many,
# e.g. a flood of unknown paths, the rest are resolved each time.
CACHED_PATHS = 1024


class InferenceMiddleware:
    """Calls the inference views directly, as Django's handler would after the chain:
    resolve (once per path), call, render; plus the headers the skipped layers add."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        if not conf.fast_path("inference_middleware"):
            raise MiddlewareNotUsed
        self.get_response = get_response
        self._matches: dict[str, Any] = {}

    def _match(self, path: str) -> Any:
        try:
            return self._matches[path]
        except KeyError:
            pass
        try:
            match = resolve(path)
        except Resolver404:
            match = None
        view = getattr(match, "func", None)
        if not getattr(getattr(view, "view_class", None), "inference", False):
            match = None
        if len(self._matches) < CACHED_PATHS:
            self._matches[path] = match
        return match

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        match = self._match(request.path_info)
        if match is None:
            return self.get_response(request)
        request.resolver_match = match
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware would check it
        response = match.func(request, *match.args, **match.kwargs)
        if callable(getattr(response, "render", None)):
            response = response.render()
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", INFERENCE_CSP)
        return response


# Every answer but the admin's: no script, style, frame or fetch, a unique origin.
INFERENCE_CSP = "sandbox; default-src 'none'"


# The admin's pages: no scripts, styles, frames or form targets from elsewhere, no browser
# features. Django adds X-Frame-Options, nosniff, Referrer-Policy and COOP itself.
ADMIN_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class AdminHeadersMiddleware:
    """``ADMIN_HEADERS`` on every ``/admin/`` response, ``INFERENCE_CSP`` on every other
    one that takes the whole chain (a 404, the admin's static files, which a browser
    loads as no page, or every answer with the ``inference_middleware`` fast path off);
    set by the app so that they hold with or without nginx in front."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.path_info.startswith("/admin/"):
            for name, value in ADMIN_HEADERS.items():
                response.headers.setdefault(name, value)
        else:
            response.headers.setdefault("Content-Security-Policy", INFERENCE_CSP)
        return response
