"""The training pipeline: configuration -> estimator -> data -> fit -> metrics -> artifacts.

``train()`` never raises for a failed job: it returns a ``TrainingResult`` saying what
happened (the one try/except around the run, as in SageMaker's training toolkit), and
``manage.py train`` turns that into files and an exit status. Pass ``on_finish`` to record
the result elsewhere (a database row) without touching the pipeline.

``fit`` runs in a forked child process, so SIGTERM (SageMaker's stop) ends the job within a
second even in the middle of a long C-level fit: the parent kills the child and no model is
written.
"""

from __future__ import annotations

import errno
import logging
import math
import multiprocessing
import platform
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import modelapp
from modelapp import drift, report
from modelapp.metadata import Feature, ModelMetadata, dotted_path, json_safe
from modelapp.paths import SageMakerPaths
from modelapp.training import (
    artifacts,
    cluster,
    compile,
    encoding,
    estimators,
    script,
    search,
)
from modelapp.training.channels import Dataset, load_channel
from modelapp.training.environment import (
    EVALUATION_CHANNELS,
    TRAIN,
    TrainingEnvironment,
)
from modelapp.training.errors import (
    COMPLETED,
    EXIT_BUG,
    EXIT_CLIENT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    FAILED,
    SKIPPED,
    STOPPED,
    STOPPED_REASON,
    ClientError,
    TrainingResult,
    TrainingStopped,
)
from modelapp.usercode import UserCodeError

logger = logging.getLogger(__name__)


def train(
    paths: SageMakerPaths,
    *,
    hp_overrides: dict[str, str] | None = None,
    channel_overrides: dict[str, Path] | None = None,
    on_finish: Callable[[TrainingResult], None] | None = None,
) -> TrainingResult:
    """Run one training job below ``paths``; the result says how it ended."""
    result = TrainingResult()
    clock = time.monotonic()
    try:
        with stop_on_sigterm():
            artifacts.clear_status(paths)
            env = TrainingEnvironment.load(paths, hp_overrides, channel_overrides)
            result.job_name = env.job_name
            result.hyperparameters = env.hyperparameters.raw
            runner_for(env)(env, result, clock).run()
    except (ClientError, UserCodeError) as exc:
        # A user's script failing passes its own exit code on.
        result.status = FAILED
        result.exit_code = getattr(exc, "exit_code", EXIT_CLIENT_ERROR)
        result.failure_reason = str(exc)
        logger.error("Training failed: %s", exc)
    except (TrainingStopped, KeyboardInterrupt) as exc:
        result.status, result.exit_code = STOPPED, EXIT_STOPPED
        result.failure_reason = str(exc) or STOPPED_REASON
        logger.error("%s", result.failure_reason)
    except FitFailed as exc:
        result.status, result.exit_code = FAILED, EXIT_BUG
        result.failure_reason = f"{exc} The traceback follows."
        result.traceback = exc.child_traceback
        logger.error("Training failed: %s\n%s", exc, exc.child_traceback)
    except Exception as exc:
        result.status, result.exit_code = FAILED, EXIT_BUG
        result.failure_reason = (
            f"smserve failed with an internal error ({type(exc).__name__}: {exc}); "
            "this is a bug, please report it with the traceback below."
        )
        result.traceback = traceback.format_exc()
        logger.exception("Training failed with an internal error.")
    result.finished_at = datetime.now(UTC)
    result.duration_seconds = round(time.monotonic() - clock, 3)
    if on_finish is not None:
        on_finish(result)
    return result


def runner_for(env: TrainingEnvironment) -> Callable[..., Any]:
    """Training runners: the user's script when the hyperparameters name one (script
    mode), else the built-in estimator trainer. All share this module's failure and
    exit-code policy."""
    if script.wants_script(env.hyperparameters.raw):
        return script.ScriptRunner
    return Trainer


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises ``TrainingStopped`` in the main thread, once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; a caller in a thread cannot stop us
        return
    stopping = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return  # a second SIGTERM must not interrupt the clean-up of the first
        stopping = True
        raise TrainingStopped()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Trainer:
    """One run's steps, in order; each may raise ``ClientError``."""

    def __init__(
        self, env: TrainingEnvironment, result: TrainingResult, clock: float
    ) -> None:
        self.env = env
        self.paths = env.paths
        self.hp = env.hyperparameters
        self.result = result
        self.clock = clock
        # What encoding.prepare chose for the table (empty: the bare estimator).
        self.preprocessing: dict[str, Any] = {}

    def run(self) -> None:
        env = self.env
        # Every host checks the same hyperparameters, so a mistake fails them all alike.
        estimator = self.build_estimator()
        spec = search.SearchSpec.of(env)
        plan = cluster.Plan.of(env, estimator, searching=spec is not None)
        if not plan.hosts.is_leader:
            if plan.spread:
                plan.serve_as_worker()
            else:
                logger.info(
                    "This is %s; %s, the first of the hosts %s, writes the model: "
                    "nothing to do here.",
                    env.current_host,
                    plan.hosts.leader,
                    ", ".join(plan.hosts.names),
                )
            self.result.status, self.result.exit_code = SKIPPED, EXIT_OK
            return
        with plan.leading() as context:
            self.fit_and_save(estimator, spec, context, len(plan.hosts.names))

    def fit_and_save(
        self,
        estimator: Any,
        spec: search.SearchSpec | None,
        context: Callable[..., Any] | None,
        hosts: int,
    ) -> None:
        """Fit (the search over ``estimator`` when ``spec``), evaluate, write the model."""
        task = estimators.task_of(estimator)
        datasets = self.load_data(task, spec.space_channel if spec else None)
        # A table's encoding goes in front of the estimator before a search wraps it.
        estimator = self.for_table(estimator, datasets[TRAIN])
        to_fit = spec.build(estimator, task, self.hp.random_seed) if spec else estimator
        model_tmp = artifacts.temporary_model_path(self.paths)
        try:
            started = time.monotonic()
            fitted = fit_in_child(to_fit, datasets[TRAIN], model_tmp, context)
            summary = None
            if spec is not None:
                summary = search.summary(
                    spec, fitted, time.monotonic() - started, hosts
                )
                cv_metric = {search.metric_name(fitted): summary["best_score"]}
                fitted = fitted.best_estimator_
                artifacts.dump_model(fitted, model_tmp)  # the model is the best one
                self.result.search = summary
            # Before this process predicts anything (below): see held_out_copy.
            held_out = self.held_out_copy(fitted, task, datasets, model_tmp)
            metrics = self.evaluate(fitted, task, datasets)
            if spec is not None:
                metrics.update(cv_metric)
            metadata = self.build_metadata(fitted, task, datasets, metrics)
            metadata.report = self.model_report(fitted, task, datasets, held_out)
            metadata.compiled = self.compile_for_serving(fitted, datasets[TRAIN])
            if summary is not None:
                metadata.extra[search.METADATA_KEY] = summary
            artifacts.write_metrics(self.paths, metrics)
            metadata = artifacts.commit(self.paths, model_tmp, metadata)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise ClientError(disk_full_reason(exc, self.paths.model_dir)) from exc
        finally:
            model_tmp.unlink(missing_ok=True)
        self.result.metrics = metrics
        self.result.model_sha256 = metadata.sha256
        self.result.status, self.result.exit_code = COMPLETED, EXIT_OK

    def held_out_copy(
        self,
        fitted: Any,
        task: str | None,
        datasets: dict[str, Dataset],
        model_tmp: Path,
    ) -> tuple[Any, Any, Any, dict[str, Any]] | None:
        """For the model report of a job without a validation channel: a copy of the
        model fitted on 80% of train, the other 20% and where they came from; None when
        the report does not hold out (a validation channel, ``smserve_report``, too few
        rows). Called before this process predicts anything: a GNU OpenMP pool started
        here (HistGradientBoosting predicts in parallel) hangs the forked fit's own."""
        if task is None or self.hp.report != "auto" or "validation" in datasets:
            return None
        from sklearn.base import clone
        from sklearn.model_selection import train_test_split

        train = datasets[TRAIN]
        assert train.y is not None
        if train.rows < 10:
            return None  # too few rows to hold any out
        seed = self.hp.random_seed or 0
        X_fit, X_held, y_fit, y_held = train_test_split(
            train.X, train.y, test_size=report.HOLDOUT_FRACTION, random_state=seed
        )
        rest = Dataset(TRAIN, X_fit, y_fit, train.feature_names, train.target_name)
        copy_tmp = model_tmp.with_name(model_tmp.name + ".report")
        try:
            copy = fit_in_child(clone(fitted), rest, copy_tmp)
        finally:
            copy_tmp.unlink(missing_ok=True)
        source = {
            "data": "train_holdout",
            "rows": len(y_held),
            "fraction": report.HOLDOUT_FRACTION,
            "random_state": seed,
            "fitted_rows": len(y_fit),
        }
        return copy, X_held, y_held, source

    def model_report(
        self,
        fitted: Any,
        task: str | None,
        datasets: dict[str, Dataset],
        held_out: tuple[Any, Any, Any, dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The model report (``modelapp/report.py``) on the validation channel; without
        one, on a held-out split of train, scoring a copy of the model fitted on the rest
        (``held_out_copy``: the saved model saw every row, so it cannot be judged on any
        of them)."""
        if task is None or self.hp.report == "off":
            return {}
        train = datasets[TRAIN]
        seed = self.hp.random_seed or 0
        names = train.feature_names or [f"column {i}" for i in range(train.n_features)]
        validation = datasets.get("validation")
        if validation is not None:
            assert validation.y is not None
            source = {"data": "validation", "rows": validation.rows}
            return report.build_report(
                fitted, task, validation.X, validation.y, source, names, seed
            )
        if held_out is None:
            return {}
        copy, X_held, y_held, source = held_out
        return report.build_report(copy, task, X_held, y_held, source, names, seed)

    def compile_for_serving(self, estimator: Any, train: Dataset) -> dict[str, Any]:
        """``model.onnx`` and the verification rows beside the model (``compile.py``)."""
        n_features = getattr(estimator, "n_features_in_", train.n_features)
        return compile.compile_for_serving(
            estimator, n_features, train.X, self.paths.model_dir
        )

    def build_estimator(self) -> Any:
        estimator = estimators.build(self.hp.estimator)
        estimators.configure(estimator, self.hp.params, self.hp.random_seed)
        if self.hp.random_seed is not None:
            np.random.seed(self.hp.random_seed)
        self.result.estimator = dotted_path(estimator)
        logger.info(
            "Estimator %s with parameters %s",
            self.result.estimator,
            json_safe(estimator.get_params(deep=False)),
        )
        return estimator

    def for_table(self, estimator: Any, train: Dataset) -> Any:
        """The estimator behind the encoding and imputation the table needs."""
        estimator, self.preprocessing = encoding.prepare(
            estimator,
            train.features,
            named=train.feature_names is not None,
            has_missing=train.has_missing,
            encoding=self.hp.categorical_encoding,
            impute=self.hp.impute,
        )
        return estimator

    def load_data(
        self, task: str | None, search_channel: str | None = None
    ) -> dict[str, Dataset]:
        """train, validation and test; ``search_channel`` held the search's space."""
        channels = self.env.channels
        if TRAIN not in channels:
            raise ClientError(
                f"No 'train' channel: the job has "
                f"{', '.join(sorted(channels)) or 'no channels'}; give the training "
                f"data as a channel named train ({self.paths.channel_dir(TRAIN)})."
            )
        if self.hp.target_column is None and task is not None:
            raise ClientError(
                f"Hyperparameter smserve_target_column is none (no label column), but "
                f"{self.result.estimator} is a {task} model: it learns from a label. "
                "Name the label column, or train a featurizer (an estimator with "
                'transform, e.g. ["standard_scaler", "pca"]).'
            )
        for name in sorted(
            set(channels) - {TRAIN, *EVALUATION_CHANNELS, search_channel}
        ):
            logger.info(
                "Ignoring channel %s: smserve reads train, validation, test.", name
            )
        datasets: dict[str, Dataset] = {}
        for name in (TRAIN, *EVALUATION_CHANNELS):
            if name not in channels:
                continue
            datasets[name] = load_channel(
                channels[name],
                self.paths,
                target_column=self.hp.target_column,
                header=self.hp.header,
                numeric_target=task == "regression",
                categorical_columns=self.hp.categorical_columns,
                # validation and test read their columns as train's
                schema=datasets[TRAIN].features if name != TRAIN else None,
            )
            config = channels[name]
            self.result.channels[name] = {
                "mode": config.input_mode,
                "content_type": config.content_type,
                "rows": datasets[name].rows,
                "features": datasets[name].n_features,
                "sources": datasets[name].sources,
            }
        train = datasets[TRAIN]
        for name, data in datasets.items():
            if name != TRAIN and (
                data.n_features != train.n_features
                or data.feature_names != train.feature_names
            ):
                raise ClientError(
                    f"Channel {name!r} does not have the features of 'train': "
                    f"{_features(data)} against {_features(train)}."
                )
        return datasets

    def evaluate(
        self, estimator: Any, task: str | None, datasets: dict[str, Dataset]
    ) -> dict[str, float]:
        """Metrics on train, and on validation/test when given; named ``channel:metric``."""
        metrics: dict[str, float] = {}
        if task is None:
            logger.info(
                "The estimator is neither a classifier nor a regressor: no metrics."
            )
            return metrics
        for name, data in datasets.items():
            assert data.y is not None  # load_data refuses a model without its label
            predictions = estimator.predict(data.X)
            for metric, value in score(task, estimator, data.y, predictions).items():
                metrics[f"{name}:{metric}"] = value
        return metrics

    def build_metadata(
        self,
        estimator: Any,
        task: str | None,
        datasets: dict[str, Dataset],
        metrics: dict[str, float],
    ) -> ModelMetadata:
        import sklearn

        train = datasets[TRAIN]
        classes = getattr(estimator, "classes_", None)
        validation = datasets.get("validation")
        n_features = getattr(estimator, "n_features_in_", train.n_features)
        features = train.features or [Feature() for _ in range(n_features)]
        outputs = drift.record_distributions(
            estimator, features, train, validation or train, classes
        )
        return ModelMetadata(
            estimator=self.result.estimator or "",
            params=json_safe(estimator.get_params(deep=True)),
            hyperparameters=self.hp.raw,
            features=features,
            preprocessing=self.preprocessing,
            outputs=outputs,
            target=train.target_name,
            classes=list(classes) if classes is not None else None,
            task=task,
            metrics=metrics,
            rows={
                "train": train.rows,
                "validation": validation.rows if validation else None,
            },
            channels=self.result.channels,
            versions={
                "python": platform.python_version(),
                "sklearn": sklearn.__version__,
                "numpy": np.__version__,
                "smserve": modelapp.__version__,
            },
            started_at=_iso(self.result.started_at),
            finished_at=_iso(datetime.now(UTC)),
            training_job_name=self.env.job_name,
            duration_seconds=round(time.monotonic() - self.clock, 3),
        )


def score(
    task: str, estimator: Any, y_true: np.ndarray, y_pred: np.ndarray
) -> dict[str, float]:
    """accuracy and F1 for a classifier (binary F1 of the second class when there are
    two, macro-averaged otherwise); R², RMSE and MAE for a regressor."""
    from sklearn import metrics

    if task == "classification":
        classes = list(getattr(estimator, "classes_", []))
        if len(classes) == 2 and set(np.unique(y_true)) <= set(classes):
            f1 = metrics.f1_score(y_true, y_pred, pos_label=classes[1])
        else:
            f1 = metrics.f1_score(y_true, y_pred, average="macro")
        return {
            "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
            "f1": float(f1),
        }
    return {
        "r2": float(metrics.r2_score(y_true, y_pred)) if len(y_true) > 1 else math.nan,
        "rmse": float(math.sqrt(metrics.mean_squared_error(y_true, y_pred))),
        "mae": float(metrics.mean_absolute_error(y_true, y_pred)),
    }


def format_metric(name: str, value: float) -> str:
    """``#metric validation:accuracy=0.966667``: what MetricDefinitions regexes match."""
    return f"#metric {name}={value:.6g}"


# --- fitting in a child process --------------------------------------------------------------
class FitFailed(Exception):
    """The estimator's ``fit`` raised something other than a data or parameter error."""

    def __init__(self, message: str, child_traceback: str) -> None:
        super().__init__(message)
        self.child_traceback = child_traceback


# A full disk (or quota) is the job's to fix, with a bigger volume: not a bug.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_reason(exc: OSError, where: Path) -> str:
    return (
        f"No space left on device while writing the model to {where} "
        f"({exc.strerror}): give the job a larger volume (VolumeSizeInGB) or make the "
        "model smaller. No model was written."
    )


def fit_in_child(
    estimator: Any,
    data: Dataset,
    model_tmp: Path,
    context: Callable[..., Any] | None = None,
) -> Any:
    """Fit in a forked child that dumps the model to ``model_tmp``; load and return it.

    The parent only waits, so SIGTERM reaches it at once; leaving this function by an
    exception kills the child. ``context(X, y, fail)``, when given, is a context manager
    the child fits inside (the Dask cluster's client); ``fail(message)`` ends the job
    with that message as the user's to fix.
    """
    import joblib

    fork = multiprocessing.get_context("fork")
    receiver, sender = fork.Pipe(duplex=False)
    child = fork.Process(
        target=_fit_child,
        args=(estimator, data.X, data.y, model_tmp, sender, context),
        name="smserve-fit",
        # Not a daemon: joblib refuses its process pool inside a daemon process (a search
        # on one host would run on one core). The finally below always ends the child.
        daemon=False,
    )
    started = time.monotonic()
    logger.info("Fitting %s on %d rows.", type(estimator).__name__, data.rows)
    child.start()
    sender.close()
    try:
        message = None
        while message is None:
            if receiver.poll(0.2):
                try:
                    message = receiver.recv()
                except EOFError:
                    message = ("died", None)
            elif not child.is_alive():
                message = ("died", None)
        child.join()
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        receiver.close()
    kind, detail = message
    if kind == "client":
        raise ClientError(detail)
    if kind == "error":
        summary, child_traceback = detail
        raise FitFailed(
            f"{type(estimator).__name__}.fit failed with {summary}.", child_traceback
        )
    if kind == "died":
        raise RuntimeError(
            f"The training process ended without a result (exit code {child.exitcode}; "
            "-9 usually means it ran out of memory)."
        )
    logger.info("Fitted in %.2fs.", time.monotonic() - started)
    return joblib.load(model_tmp)


def _fit_child(
    estimator: Any,
    X: Any,
    y: Any,
    model_tmp: Path,
    sender: Any,
    context: Callable[..., Any] | None = None,
) -> None:
    """In the child: fit, dump, and tell the parent how it went (the first message
    counts: the parent stops the child once it has one)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops us by killing us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            fail = lambda message: sender.send(("client", message))  # noqa: E731
            with context(X, y, fail) if context else nullcontext():
                estimator.fit(X, y)
        except ClientError as exc:
            sender.send(("client", str(exc)))
            return
        except ValueError as exc:
            # scikit-learn validates parameters in fit (InvalidParameterError, a
            # ValueError) and rejects unusable data with ValueError: both the user's to fix.
            if type(exc).__name__ == "InvalidParameterError":
                message = (
                    f"Invalid hyperparameter: {exc} "
                    f"{estimators.valid_parameters(estimator)}"
                )
            else:
                message = f"{type(estimator).__name__} could not be fitted: {exc}"
            sender.send(("client", message))
            return
        try:
            artifacts.dump_model(estimator, model_tmp)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            sender.send(("client", disk_full_reason(exc, model_tmp.parent)))
            return
        sender.send(("ok", None))
    except BaseException as exc:
        summary = f"{type(exc).__name__}: {exc}"
        sender.send(("error", (summary, traceback.format_exc())))
    finally:
        sender.close()


def _features(data: Dataset) -> str:
    if data.feature_names:
        return f"{data.n_features} ({', '.join(data.feature_names)})"
    return f"{data.n_features} unnamed"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
