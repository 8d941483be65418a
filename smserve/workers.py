"""gunicorn's sync worker, woken one at a time.

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

import os
import select
from typing import Any

from gunicorn.workers import sync


class ExclusiveAcceptWorker(sync.SyncWorker):
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
