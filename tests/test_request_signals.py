"""Django's per-request DB/cache receivers stay off until a request thread opens a
connection, then come back for good (``modelapp/request_signals.py``)."""

from __future__ import annotations

import threading

import pytest
from django.core import signals
from django.core.cache import close_caches
from django.db import close_old_connections, connection, reset_queries
from django.db.backends.signals import connection_created

from modelapp import request_signals
from modelapp.stats import StatsCollector


def _receivers(signal) -> list:
    return [ref() for _, ref, _ in signal.receivers]


@pytest.fixture
def installed():
    request_signals.restore()
    request_signals.install()
    yield
    request_signals.restore()


def test_install_disconnects_the_no_op_receivers(installed):
    assert reset_queries not in _receivers(signals.request_started)
    assert close_old_connections not in _receivers(signals.request_started)
    assert close_old_connections not in _receivers(signals.request_finished)
    assert close_caches not in _receivers(signals.request_finished)


def test_a_connection_in_a_request_thread_restores_djangos_receivers(installed):
    # What Django sends when a thread opens a database connection.
    connection_created.send(sender=type(connection), connection=connection)
    assert reset_queries in _receivers(signals.request_started)
    assert close_old_connections in _receivers(signals.request_started)
    assert close_old_connections in _receivers(signals.request_finished)
    assert close_caches in _receivers(signals.request_finished)


def test_the_stats_flusher_thread_does_not_restore_them(installed, monkeypatch):
    from modelapp import stats

    flusher = StatsCollector()
    monkeypatch.setattr(stats, "collector", flusher)
    seen = []

    def run() -> None:
        request_signals._on_connection_created(sender=None, connection=None)
        seen.append(close_old_connections in _receivers(signals.request_started))

    flusher._flusher.thread = threading.Thread(target=run)
    flusher._flusher.thread.start()
    flusher._flusher.thread.join()
    assert seen == [False]


def test_a_cache_with_a_real_close_keeps_close_caches(settings):
    request_signals.restore()
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"}
    }
    try:
        request_signals.install()
        assert close_caches in _receivers(signals.request_finished)
        assert close_old_connections not in _receivers(signals.request_finished)
    finally:
        request_signals.restore()
