"""Training: the SageMaker training contract for scikit-learn estimators.

``environment`` reads the job's configuration, ``channels`` its data, ``estimators`` builds
the estimator from hyperparameters, ``artifacts`` writes the model, and ``run`` ties them
together. ``manage.py train`` turns the run's outcome into files and an exit status.

Errors follow SageMaker's training toolkit: a ``ClientError`` is the user's to fix (its message
alone goes to ``output/failure``); anything else is a bug in smserve (the traceback goes too).
"""


class ClientError(Exception):
    """A mistake in the job's configuration or data: the message says what to fix."""


class TrainingStopped(BaseException):
    """SageMaker asked the job to stop (SIGTERM).

    A ``BaseException``, like ``KeyboardInterrupt``, so no library's ``except Exception``
    swallows it on the way up.
    """
