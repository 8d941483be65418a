"""Errors a user's inference script (script mode) may raise to choose its HTTP answer.

Plain Python, importable from ``inference.py`` without Django::

    from smserve.errors import HTTPError

    def input_fn(body, content_type):
        if content_type != "application/json":
            raise HTTPError(415, f"Send JSON, not {content_type}.")

Any exception with an integer ``status_code`` between 400 and 599 works the same way (the
inference toolkit's ``GenericInferenceToolkitError`` included); every other exception in a
hook answers 500. The body is always ``{"detail": <the message>, "code": <code>}``; the
traceback goes to the container's log only.
"""

from __future__ import annotations


class HTTPError(Exception):
    """Answer ``status_code`` with ``message`` as the detail; ``code`` names the error
    for clients (default ``script_error``)."""

    def __init__(
        self, status_code: int, message: str = "", code: str = "script_error"
    ) -> None:
        super().__init__(message)
        self.status_code = int(status_code)
        self.message = message
        self.code = code
