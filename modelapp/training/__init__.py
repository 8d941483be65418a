"""Training: the SageMaker training contract for scikit-learn estimators.

``environment`` reads the job's configuration, ``channels`` its data, ``estimators`` builds
the estimator from hyperparameters, ``artifacts`` writes the model, ``compile`` the compiled
engine's files beside it, and ``run`` ties them together. ``manage.py train`` turns the
run's outcome into files and an exit status.

How a job ends (``ClientError``, ``TrainingStopped``, ``TrainingResult`` and the outcome
constants) is in ``errors``, re-exported here.
"""

from modelapp.training.errors import (
    COMPLETED,
    EXIT_BUG,
    EXIT_CLIENT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    FAILED,
    SKIPPED,
    STOPPED,
    ClientError,
    TrainingResult,
    TrainingStopped,
)

__all__ = [
    "COMPLETED",
    "EXIT_BUG",
    "EXIT_CLIENT_ERROR",
    "EXIT_OK",
    "EXIT_STOPPED",
    "FAILED",
    "SKIPPED",
    "STOPPED",
    "ClientError",
    "TrainingResult",
    "TrainingStopped",
]
