"""A gunicorn worker's background thread: one call every few seconds until it is stopped.

The stats flusher (``modelapp.stats``) and the multi-model sweeper
(``modelapp.multimodel``) each run one per worker, started after the fork.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)


class Periodic:
    """``first()`` once, then ``tick()`` every ``interval`` seconds, in a daemon thread;
    an exception is logged and the next tick comes as usual."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], object],
        first: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.tick = tick
        self.first = first
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, interval: float) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self._stop.clear()
        self.thread = threading.Thread(
            target=self._run,
            args=(interval,),
            name=f"{self.name}-{os.getpid()}",
            daemon=True,
        )
        self.thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout)
            self.thread = None

    def is_current(self) -> bool:
        """Whether the caller runs in this thread."""
        return self.thread is threading.current_thread()

    def _run(self, interval: float) -> None:
        if self.first is not None:
            self._call(self.first)
        while not self._stop.wait(interval):
            self._call(self.tick)

    def _call(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # a bug in a step must not stop the thread for good
            logger.exception("%s: %s failed.", self.name, step.__name__)


def discard_connection() -> None:
    """Close this thread's database connection so the next attempt opens a fresh one (a
    server that went away leaves a broken one behind)."""
    try:
        connection.close()
    except DatabaseError:
        pass
