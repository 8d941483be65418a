"""A training run's ``TrainingRun`` row: bookkeeping that never stops the training.

``manage.py train`` calls ``RunRecorder.start(paths)`` before the run (it applies the
migrations and writes a ``running`` row) and passes ``recorder.finish`` as the run's
``on_finish``. When no database is reachable (none configured in the training container, or
a team's PostgreSQL down) each step logs a warning and the training goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management import call_command
from django.db import DatabaseError, connections

from modelapp import conf
from modelapp.metadata import json_safe
from modelapp.paths import SageMakerPaths
from modelapp.state import make_state_dir
from modelapp.training.errors import (
    COMPLETED,
    FAILED,
    SKIPPED,
    STOPPED,
    TrainingResult,
)

logger = logging.getLogger(__name__)

# TrainingResult.status -> TrainingRun.status ("skipped": another host writes the
# model, and this one's part of the job succeeded).
STATUSES = {
    COMPLETED: "succeeded",
    SKIPPED: "succeeded",
    FAILED: "failed",
    STOPPED: "stopped",
}


class RunRecorder:
    """Writes one ``TrainingRun``; ``run_id`` is None when the database is unavailable."""

    def __init__(self, paths: SageMakerPaths) -> None:
        self.paths = paths
        self.run_id: int | None = None

    @classmethod
    def start(cls, paths: SageMakerPaths) -> RunRecorder:
        """Migrate and write the ``running`` row, if a database answers."""
        recorder = cls(paths)
        if recorder._attempt("migrate the database", recorder._migrate):
            recorder._attempt("record the run's start", recorder._create)
        # The fit runs in a forked child: no open connection may be shared with it.
        connections.close_all()
        return recorder

    def finish(self, result: TrainingResult) -> None:
        """The run's outcome onto the row."""
        self._attempt("record the run's outcome", lambda: self._update(result))
        connections.close_all()

    def _migrate(self) -> None:
        make_state_dir(conf.get("STATE_DIR"))  # SQLite's file lives there
        call_command("migrate", interactive=False, verbosity=0)

    def _create(self) -> None:
        # The models module needs the app registry, ready only once Django is set up.
        from modelapp.models import TrainingRun

        self.run_id = TrainingRun.objects.create(base_dir=str(self.paths.base)).pk

    def _update(self, result: TrainingResult) -> None:
        # The models module needs the app registry, ready only once Django is set up.
        from modelapp.models import TrainingRun

        values = {
            "job_name": result.job_name or "",
            "status": STATUSES.get(result.status, TrainingRun.FAILED),
            "estimator": result.estimator or "",
            "hyperparameters": json_safe(result.hyperparameters),
            "channels": json_safe(result.channels),
            "metrics": json_safe(result.metrics),
            "search": json_safe(result.search),
            "failure_reason": result.failure_reason or "",
            "model_sha256": result.model_sha256 or "",
            "base_dir": str(self.paths.base),
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "duration_seconds": result.duration_seconds,
        }
        if self.run_id is None or not TrainingRun.objects.filter(pk=self.run_id).update(
            **values
        ):
            # The database came back during the run, or the row went: write it whole.
            self.run_id = TrainingRun.objects.create(**values).pk

    def _attempt(self, what: str, step: Any) -> bool:
        try:
            step()
        except DatabaseError as exc:
            logger.warning(
                "Could not %s (%s: %s); training goes on without the database.",
                what,
                type(exc).__name__,
                exc,
            )
            return False
        except Exception:
            # A bug in this bookkeeping must not cost the user their training job.
            logger.exception("Could not %s; training goes on.", what)
            return False
        return True
