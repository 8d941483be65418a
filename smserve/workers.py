"""gunicorn's sync worker: its own errors in the API's JSON, and woken one at a time.

gunicorn answers a request it cannot parse itself (a header value with a control
character, which nginx lets through, a request line or headers over its limits) with an
HTML page; ``JSONErrorsMixin`` answers ``{"detail", "code"}`` instead, as everything else
on the API does. ``SyncWorker`` is gunicorn's sync worker with only that.

gunicorn's sync workers wait for a connection with ``select()`` on the listening socket
they share, so every new connection wakes every idle worker: one accepts it, the others
find nothing (``EAGAIN``), heartbeat and go back to sleep. nginx opens one upstream
connection per request, so that is a wasted wake-up per request per idle worker, and the
requests are spread over all the workers' caches.

``ExclusiveAcceptWorker`` waits in ``epoll`` with ``EPOLLEXCLUSIVE`` (Linux 4.5+) instead: the kernel
wakes one waiting worker per connection, and a lightly loaded server keeps answering from
the same warm worker. Everything else is gunicorn's sync worker. Where epoll is missing
(not Linux) it is gunicorn's sync worker unchanged.
"""

from __future__ import annotations

import json
import os
import select
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.workers import sync

# gunicorn's parse errors that are not a plain 400: (status, reason, code).
PARSE_ERRORS: list[tuple[type[Exception], int, str, str]] = [
    (errors.LimitRequestLine, 414, "URI Too Long", "uri_too_long"),
    (
        errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
    ),
    (errors.UnsupportedTransferCoding, 501, "Not Implemented", "not_implemented"),
    (errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    (errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden"),
]
# What the application sent wrong, or gunicorn's configuration: a server error.
SERVER_FAULTS = (
    errors.InvalidResponseHeader,
    errors.InvalidResponseHeaderName,
    errors.ConfigurationProblem,
)


class JSONErrorsMixin:
    """gunicorn's ``handle_error`` answering JSON ``{"detail", "code"}``, not HTML, and
    logging as gunicorn does (a warning for the client's fault, the traceback for ours).
    """

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        addr = addr or ("", -1)  # a unix socket
        if isinstance(exc, errors.ParseException) and not isinstance(
            exc, SERVER_FAULTS
        ):
            status, reason, code = 400, "Bad Request", "bad_request"
            for kind, status_, reason_, code_ in PARSE_ERRORS:
                if isinstance(exc, kind):
                    status, reason, code = status_, reason_, code_
                    break
            detail = f"Bad request: {exc}."
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        else:
            status, reason, code = 500, "Internal Server Error", "server_error"
            detail = "The model server failed to handle the request (see its log)."
            self.log.error("Error handling request", exc_info=exc)
        body = json.dumps({"detail": detail, "code": code}).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:  # the client is gone: nothing to tell it
            self.log.debug("Failed to send error message.")


class SyncWorker(JSONErrorsMixin, sync.SyncWorker):
    """gunicorn's sync worker, its errors in JSON."""


class ExclusiveAcceptWorker(JSONErrorsMixin, sync.SyncWorker):
    """gunicorn's sync worker, waiting in ``epoll`` with ``EPOLLEXCLUSIVE`` (trick
    ``exclusive_accept`` in ``smserve/fastpaths.py``)."""

    _poller: Any = None

    def run(self) -> None:
        if not hasattr(select, "epoll"):
            return super().run()
        self._listeners = {sock.fileno(): sock for sock in self.sockets}
        self._poller = select.epoll()
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        for fd in self._listeners:
            self._poller.register(fd, select.EPOLLIN | exclusive)
        # Signals wake the worker through this pipe (gunicorn's set_wakeup_fd).
        self._poller.register(self.PIPE[0], select.EPOLLIN)
        try:
            return super().run()
        finally:
            self._poller.close()

    def wait(self, timeout: float) -> Any:
        """As gunicorn's: heartbeat, then the ready listeners (and the pipe, drained)."""
        if self._poller is None:
            return super().wait(timeout)
        self.notify()
        ready: list[Any] = []
        for fd, _ in self._poller.poll(timeout):
            if fd == self.PIPE[0]:
                os.read(fd, 1)
                ready.append(fd)
            else:
                ready.append(self._listeners[fd])
        return ready
