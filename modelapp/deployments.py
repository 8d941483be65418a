"""Which models this process serves, as rows: a ``TrainedModel`` per model loaded
(upserted by checksum, once per process) and a ``ModelEvent`` per multi-model load or
unload.

Written off the request path by the stats flusher thread (``stats.StatsCollector``): once
when it starts, then before each flush, until the database answers. ``note()`` queues a
model loaded through the multi-model API with its event; the model of a single-model
endpoint is the registry's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.db import DatabaseError, close_old_connections

from modelapp.periodic import discard_connection
from modelapp.registry import registry

logger = logging.getLogger(__name__)


class Deployments:
    """The rows still to write, and the checksums this process has written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recorded: set[str] = set()
        self._models: list[tuple[str, dict[str, Any]]] = []
        self._events: list[dict[str, Any]] = []

    def note(self, loaded: Any, event: dict[str, Any] | None = None) -> None:
        """Record ``loaded`` (a ``registry.LoadedModel``) and a ``ModelEvent`` with the
        fields ``event`` at the next flush. The row's fields are taken now: the model
        itself may be unloaded by then."""
        # Imported here: the models need the app registry, which the serving process
        # has by the time a model loads (multimodel imports this module earlier).
        from modelapp.models import TrainedModel

        values = TrainedModel.values_of(loaded) if loaded is not None else None
        with self._lock:
            if values is not None:
                self._models.append((loaded.sha256, values))
            if event is not None:
                self._events.append(event)

    def record(self) -> None:
        """Write the loaded model(s) and the queued events; what fails is kept for the
        next call."""
        from modelapp.models import ModelEvent, TrainedModel

        with self._lock:
            pending, self._models = self._models, []
            events, self._events = self._events, []
        loaded = registry.loaded
        if loaded is not None and loaded.sha256 not in self._recorded:
            pending.insert(0, (loaded.sha256, TrainedModel.values_of(loaded)))
        if not pending and not events:
            return  # no database access at all
        done = 0
        try:
            close_old_connections()
            for sha256, values in pending:
                if sha256 not in self._recorded:
                    TrainedModel.record_values(sha256, values)
                    self._recorded.add(sha256)
                done += 1
            if events:
                ModelEvent.objects.bulk_create(ModelEvent(**e) for e in events)
                events = []
        except DatabaseError as exc:
            logger.warning(
                "Models not recorded yet (%s: %s); retrying at the next flush.",
                type(exc).__name__,
                exc,
            )
            discard_connection()
            with self._lock:
                self._models[:0] = pending[done:]
                self._events[:0] = events


deployments = Deployments()
