"""How a training job ends: the errors that end it, the outcome vocabulary and the result.

A leaf module: every training module, the ``train`` command and the script runner import
from here, and it imports nothing of the project.

Errors follow SageMaker's training toolkit: a ``ClientError`` is the user's to fix (its
message alone goes to ``output/failure``); anything else is a bug in smserve (the traceback
goes too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

COMPLETED, FAILED, STOPPED, SKIPPED = "completed", "failed", "stopped", "skipped"
EXIT_OK, EXIT_CLIENT_ERROR, EXIT_BUG, EXIT_STOPPED = 0, 1, 2, 143
STOPPED_REASON = (
    "Training was stopped (SIGTERM) before it finished; no model was written."
)


class ClientError(Exception):
    """A mistake in the job's configuration or data: the message says what to fix."""


class TrainingStopped(BaseException):
    """SageMaker asked the job to stop (SIGTERM).

    A ``BaseException``, like ``KeyboardInterrupt``, so no library's ``except Exception``
    swallows it on the way up.
    """


@dataclass
class TrainingResult:
    """Everything known about one run, whether it succeeded or not."""

    status: str = FAILED
    exit_code: int = EXIT_BUG
    job_name: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    estimator: str | None = None
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    failure_reason: str = ""
    traceback: str = ""
    model_sha256: str | None = None
    search: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    duration_seconds: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in (COMPLETED, SKIPPED)
