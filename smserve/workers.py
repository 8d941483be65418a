"""gunicorn's sync worker: its own errors in the API's JSON, and woken one at a time.

gunicorn answers a request it cannot parse itself (a header value with a control
character, which nginx lets through, a request line or headers over its limits) with an
HTML page; ``JSONErrorsMixin`` answers ``{"detail", "code"}`` instead, as everything else
on the API does. ``SyncWorker`` is gunicorn's sync worker with only that and the promises
below.

gunicorn's sync workers wait for a connection with ``select()`` on the listening socket
they share, so every new connection wakes every idle worker: one accepts it, the others
find nothing (``EAGAIN``), heartbeat and go back to sleep. nginx opens one upstream
connection per request, so that is a wasted wake-up per request per idle worker, and the
requests are spread over all the workers' caches.

``ExclusiveAcceptWorker`` waits in ``epoll`` with ``EPOLLEXCLUSIVE`` (Linux 4.5+) instead: the kernel
wakes one waiting worker per connection, and a lightly loaded server keeps answering from
the same warm worker. Everything else is gunicorn's sync worker. Where epoll is missing
(not Linux) it is gunicorn's sync worker unchanged.

Both keep three promises that gunicorn alone does not:

- **The timeout is a 504, always.** nginx answers 504 ``model_server_timeout`` when the
  model server timeout passes without a response, and gunicorn kills a worker that is
  still stuck five seconds later. Should nginx not answer first (its clock starts when it
  hands the request over, the worker's a little later), the worker times the request
  itself (``TimedRequestsMixin``): at the timeout it stops the request with the same 504
  and exits, to be replaced, since the interrupted code may have left anything half done.
  gunicorn's own kill is answered with that 504 too, never a 500.
- **A stop is quick.** A worker that has run its exit hooks leaves without Python's
  teardown (``exit_without_teardown``).
- **A stop during boot is not lost.** A SIGTERM that reaches a worker between its fork
  and gunicorn installing the worker's handlers runs the master's handler, inherited
  through the fork, and is forgotten: the worker boots, serves, and the master waits out
  its whole grace period. ``catch_early_stop`` (``post_fork``) notices those signals and
  the worker leaves at once.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Iterable
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


# The signals the master sends a worker to stop it (graceful, quick, interrupt).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGQUIT, signal.SIGINT})


class InvocationTimeout(BaseException):
    """The request ran past the model server timeout (raised by SIGALRM). A
    ``BaseException``, like gunicorn's own abort, so that no ``except Exception`` in the
    app or a library turns it into an ordinary error."""


def timeout_body(timeout: int) -> bytes:
    """nginx's 504 for the same case, word for word (``docker/nginx.conf``)."""
    detail = f"The invocation took longer than the model server timeout of {timeout} s."
    return json.dumps(
        {"detail": detail, "code": "model_server_timeout"}, separators=(",", ":")
    ).encode()


def catch_early_stop(server: Any, worker: Any) -> None:
    """In a newly forked worker (gunicorn's ``post_fork``): a stop signal that came
    before this point ran the master's handler, inherited through the fork, which put it
    in this process's copy of the master's queue; one that comes from here until gunicorn
    installs the worker's own handlers runs the handler set here. Either way the worker
    leaves as soon as it starts its loop, instead of serving until the master's grace
    period ends."""

    def stop(signum: int, frame: Any) -> None:
        worker.alive = False

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    queue = getattr(server, "SIG_QUEUE", None)
    while queue is not None and not queue.empty():
        if queue.get_nowait() in STOP_SIGNALS:
            worker.alive = False


def exit_without_teardown(worker: Any) -> None:
    """In a worker leaving (gunicorn's ``worker_exit``, its hooks done): flush the logs
    and end the process with its exit status now. Python's own teardown of a worker
    (every module, the model's copy-on-write pages, library thread pools) adds seconds on
    a busy machine, and the master, and a stopping ``serve``, wait for it. gunicorn also
    calls ``worker_exit`` in the master for a worker already gone: nothing then."""
    if os.getpid() != worker.pid:
        return
    exc = sys.exc_info()[1]
    code = exc.code if isinstance(exc, SystemExit) else 0
    if code is None:
        code = 0
    elif not isinstance(code, int):
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class JSONErrorsMixin:
    """gunicorn's ``handle_error`` answering JSON ``{"detail", "code"}``, not HTML, and
    logging as gunicorn does (a warning for the client's fault, the traceback for ours).
    """

    log: Any

    def handle_error(
        self, req: Any, client: Any, addr: Any, exc: BaseException
    ) -> None:
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
        body = json.dumps({"detail": detail, "code": code}).encode()
        self.write_error(client, status, reason, body)

    def write_error(self, client: Any, status: int, reason: str, body: bytes) -> None:
        """One JSON error response, then the connection closes."""
        body += b"\n"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:  # the client is gone: nothing to tell it
            self.log.debug("Failed to send error message.")


class TimedRequestsMixin(JSONErrorsMixin):
    """Each request runs under a deadline of the model server timeout (``SIGALRM``),
    cleared as soon as the app has its response, before gunicorn writes it, so that a
    response is never cut in two. Past the deadline, or killed by gunicorn's own timeout,
    the request is answered 504 ``model_server_timeout`` and the worker exits."""

    wsgi: Any
    alive: bool
    _aborted = False

    @property
    def invocation_timeout(self) -> int:
        from modelapp import conf

        return conf.get("TIMEOUT")

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        app = self.wsgi
        timeout = self.invocation_timeout

        def timed_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                return app(environ, start_response)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)

        self.wsgi = timed_app

    def init_signals(self) -> None:
        super().init_signals()  # type: ignore[misc]
        signal.signal(signal.SIGALRM, self._deadline_passed)

    def _deadline_passed(self, signum: int, frame: Any) -> None:
        raise InvocationTimeout()

    def handle_abort(self, sig: int, frame: Any) -> None:
        # gunicorn's kill of a worker past its timeout: SystemExit inside the request.
        self._aborted = True
        super().handle_abort(sig, frame)  # type: ignore[misc]

    def handle_error(
        self, req: Any, client: Any, addr: Any, exc: BaseException
    ) -> None:
        if not (
            isinstance(exc, InvocationTimeout)
            or (isinstance(exc, SystemExit) and self._aborted)
        ):
            return super().handle_error(req, client, addr, exc)
        self.alive = False
        self.log.warning(
            "A request ran past the model server timeout of %s s: answered 504; "
            "this worker exits and is replaced.",
            self.invocation_timeout,
        )
        self.write_error(
            client, 504, "Gateway Timeout", timeout_body(self.invocation_timeout)
        )


class SyncWorker(TimedRequestsMixin, sync.SyncWorker):
    """gunicorn's sync worker, its errors in JSON, its requests timed."""


class ExclusiveAcceptWorker(TimedRequestsMixin, sync.SyncWorker):
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
