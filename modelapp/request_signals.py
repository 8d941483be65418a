"""Django's per-request database and cache housekeeping, only once a request can need it.

Django connects four receivers to every request: ``reset_queries`` and
``close_old_connections`` to ``request_started``, ``close_old_connections`` and
``close_caches`` to ``request_finished``. Dispatching them is a measurable share of a
small invocation (``bench/RESULTS.md``, round 2), and on the inference paths they have
nothing to do:

- ``reset_queries`` and ``close_old_connections`` act only on the connections the calling
  thread has opened. An invocation opens none, and the stats flusher, the one thread of a
  worker that does, calls ``close_old_connections`` itself.
- ``close_caches`` calls each cache's ``close()``, a no-op for the local-memory, file and
  database backends (``BaseCache.close``).

So ``install()`` disconnects them, and the first time any thread other than the stats
flusher opens a database connection (an admin request, a management command, a test),
Django's ``connection_created`` signal puts them back for good: from then on every request
gets Django's own handling. Until then they would have found no connection to act on.
``close_caches`` is left connected if a configured cache backend has a real ``close()``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.cache.backends.base import BaseCache
from django.db import close_old_connections, reset_queries
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string

from modelapp import stats

_lock = threading.Lock()
_removed: list[tuple[Any, Any]] = []


def _caches_close_is_noop() -> bool:
    try:
        return all(
            import_string(config["BACKEND"]).close is BaseCache.close
            for config in settings.CACHES.values()
        )
    except (ImportError, KeyError, AttributeError):
        return False


def install() -> None:
    """Disconnect Django's per-request receivers until a connection is opened."""
    pairs = [
        (signals.request_started, reset_queries),
        (signals.request_started, close_old_connections),
        (signals.request_finished, close_old_connections),
    ]
    if _caches_close_is_noop():
        pairs.append((signals.request_finished, close_caches))
    with _lock:
        for signal, receiver in pairs:
            if signal.disconnect(receiver):
                _removed.append((signal, receiver))
        if _removed:
            connection_created.connect(_on_connection_created, dispatch_uid=__name__)


def restore() -> None:
    """Reconnect what ``install()`` took away (idempotent)."""
    with _lock:
        for signal, receiver in _removed:
            signal.connect(receiver)
        _removed.clear()
        connection_created.disconnect(dispatch_uid=__name__)


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if not stats.collector.owns_current_thread():
        restore()
