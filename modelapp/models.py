"""What the admin shows: the models served, the training runs, and the traffic.

``TrainedModel`` is written by the serving side from the loaded artifact (``metadata.json``
is the truth: SageMaker trains and serves in different containers); ``TrainingRun`` by
``manage.py train`` (``modelapp.training.record``); ``InvocationStat`` by the stats flusher
(``modelapp.stats``). None of them is ever written on the request path.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from modelapp.metadata import ModelMetadata, json_safe

logger = logging.getLogger(__name__)


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


class TrainedModel(models.Model):
    """One model artifact, keyed by the sha256 of its bytes."""

    SOURCE_METADATA = "metadata"
    SOURCE_ESTIMATOR = "estimator"
    SOURCE_CHOICES = [
        (SOURCE_METADATA, "metadata.json"),
        (SOURCE_ESTIMATOR, "the estimator itself (no metadata.json)"),
    ]

    sha256 = models.CharField("sha256", max_length=64, unique=True)
    estimator = models.CharField(max_length=255, blank=True)
    params = models.JSONField("hyperparameters", default=dict, blank=True)
    feature_names = models.JSONField(default=list, blank=True)
    n_features = models.PositiveIntegerField("features", null=True, blank=True)
    classes = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    versions = models.JSONField("library versions", default=dict, blank=True)
    training_job_name = models.CharField(max_length=255, blank=True)
    training_started_at = models.DateTimeField(null=True, blank=True)
    training_finished_at = models.DateTimeField(null=True, blank=True)
    artifact_size = models.BigIntegerField("artifact bytes", null=True, blank=True)
    loaded_from = models.CharField(max_length=1024, blank=True)
    source = models.CharField(
        "described by", max_length=16, choices=SOURCE_CHOICES, blank=True
    )
    metadata = models.JSONField("metadata.json", default=dict, blank=True)
    # Which engine serves each method, and the verification behind it (predictors/compiled.py).
    engines = models.JSONField("prediction engines", default=dict, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-last_seen"]
        verbose_name = "trained model"

    def __str__(self) -> str:
        name = self.estimator.split(" (", 1)[0]
        if name.startswith("script:"):  # script mode: the script's name
            name = name.removeprefix("script:")
        else:
            name = name.rsplit(".", 1)[-1]
        return f"{name or 'model'} {self.sha256[:12]}"

    @staticmethod
    def describe(
        metadata: ModelMetadata | None, estimator: Any = None
    ) -> dict[str, Any]:
        """Field values from ``metadata.json``, else from what the estimator says."""
        source = TrainedModel.SOURCE_METADATA
        if metadata is None:
            source = TrainedModel.SOURCE_ESTIMATOR
            metadata = ModelMetadata.from_estimator(estimator)
        return {
            "source": source,
            "estimator": metadata.estimator,
            "params": json_safe(metadata.params),
            "feature_names": metadata.feature_names or [],
            "n_features": metadata.n_features,
            "classes": json_safe(metadata.classes or []),
            "metrics": json_safe(metadata.metrics),
            "versions": json_safe(metadata.versions),
            "training_job_name": metadata.training_job_name or "",
            "training_started_at": _datetime(metadata.started_at),
            "training_finished_at": _datetime(metadata.finished_at),
            "metadata": metadata.to_dict()
            if source == TrainedModel.SOURCE_METADATA
            else {},
        }

    @classmethod
    def values_of(cls, loaded: Any) -> dict[str, Any]:
        """The row's fields for a ``registry.LoadedModel`` (no database access)."""
        estimator = getattr(loaded.predictor, "model", None)
        values = cls.describe(loaded.metadata, estimator)
        describe = getattr(loaded.predictor, "describe_estimator", None)
        if describe is not None:  # e.g. a script's name (script mode)
            values["estimator"] = describe(values["estimator"])[:255]
        report = getattr(loaded.predictor, "engine_report", None)
        values.update(
            engines=report.to_dict() if report is not None else {},
            artifact_size=loaded.size,
            loaded_from=str(loaded.path),
        )
        return values

    @classmethod
    def record(cls, loaded: Any) -> TrainedModel:
        """Upsert the row for a ``registry.LoadedModel``: created on first sight, refreshed
        (metadata, path, last seen) on every later one."""
        return cls.record_values(loaded.sha256, cls.values_of(loaded))

    @classmethod
    def record_values(cls, sha256: str, values: dict[str, Any]) -> TrainedModel:
        """``record`` with the fields taken earlier (``values_of``)."""
        obj, created = cls.objects.update_or_create(
            sha256=sha256, defaults={**values, "last_seen": timezone.now()}
        )
        logger.info(
            "%s trained model %s in the database.",
            "Recorded" if created else "Refreshed",
            obj,
        )
        return obj

    def pretty(self, field: str) -> str:
        return json.dumps(getattr(self, field), indent=2, sort_keys=True)


def model_by_checksum(related_name: str) -> models.ForeignKey:
    """A link to ``TrainedModel`` by sha256 that the database does not enforce: rows are
    kept even while the model's own row cannot be written yet."""
    return models.ForeignKey(
        TrainedModel,
        to_field="sha256",
        db_column="model_sha256",
        db_constraint=False,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name=related_name,
    )


class ModelEvent(models.Model):
    """Multi-model mode: a model loaded or unloaded through SageMaker's model API."""

    LOAD = "load"
    UNLOAD = "unload"
    KIND_CHOICES = [(LOAD, "load"), (UNLOAD, "unload")]

    model = model_by_checksum(related_name="events")
    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    # SageMaker's opaque model_name and the directory the model came from.
    name = models.CharField("model name", max_length=1024)
    url = models.CharField(max_length=1024, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    seconds = models.FloatField("took (s)", null=True, blank=True)
    memory_bytes = models.BigIntegerField("memory (bytes)", null=True, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "model load/unload"
        verbose_name_plural = "model loads/unloads"

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class TrainingRun(models.Model):
    """One ``manage.py train`` run, as it went."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    STATUS_CHOICES = [
        (RUNNING, "running"),
        (SUCCEEDED, "succeeded"),
        (FAILED, "failed"),
        (STOPPED, "stopped"),
    ]

    job_name = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=RUNNING)
    estimator = models.CharField(max_length=255, blank=True)
    hyperparameters = models.JSONField(
        default=dict, blank=True, help_text="As given (SageMaker sends strings)."
    )
    channels = models.JSONField(
        default=dict, blank=True, help_text="Per channel: content type, mode, rows."
    )
    metrics = models.JSONField(default=dict, blank=True)
    search = models.JSONField(
        "hyperparameter search",
        default=dict,
        blank=True,
        help_text="The search's candidates, scores, best parameters and time.",
    )
    failure_reason = models.TextField(blank=True)
    model_sha256 = models.CharField("model sha256", max_length=64, blank=True)
    base_dir = models.CharField(max_length=1024, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField("duration (s)", null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["status", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.job_name or 'local run'} ({self.status})"


class InvocationStat(models.Model):
    """Invocations of one model in one minute (UTC), summed over every worker.

    ``model`` is the artifact's sha256 (null while no model is loaded); it is not a
    database-enforced key, so counts are kept even if the model's row could not be
    written yet.
    """

    model = model_by_checksum(related_name="stats")
    minute = models.DateTimeField(db_index=True)
    requests = models.PositiveBigIntegerField(default=0)
    records = models.PositiveBigIntegerField(default=0)
    errors_4xx = models.PositiveBigIntegerField("4xx", default=0)
    errors_5xx = models.PositiveBigIntegerField("5xx", default=0)
    latency_ms_total = models.FloatField("total latency (ms)", default=0)
    latency_ms_max = models.FloatField("max latency (ms)", default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-minute"]
        verbose_name = "invocation stat"
        constraints = [
            models.UniqueConstraint(
                fields=["model", "minute"], name="modelapp_stat_model_minute"
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.requests} requests"

    @property
    def errors(self) -> int:
        return self.errors_4xx + self.errors_5xx

    @property
    def latency_ms_mean(self) -> float:
        return self.latency_ms_total / self.requests if self.requests else 0.0


class DriftCount(models.Model):
    """Sampled served records of one model in one hour (UTC), counted into the bins of
    its reference by one worker process (``modelapp.capture``): ``counts`` holds, per
    feature position, the bin counts and the missing, unknown and out-of-range ones, and
    the output distribution. The drift page adds a window's rows up."""

    model = model_by_checksum(related_name="drift_counts")
    hour = models.DateTimeField(db_index=True)
    writer = models.CharField("worker process", max_length=32)
    records = models.PositiveBigIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-hour"]
        verbose_name = "drift count"
        constraints = [
            models.UniqueConstraint(
                fields=["model", "hour", "writer"], name="modelapp_drift_model_hour"
            )
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.records} records"


class DriftReference(models.Model):
    """The reference of a model with no training distributions in its metadata.json
    (trained elsewhere): the bins of its first served records."""

    model = model_by_checksum(related_name="drift_references")
    records = models.PositiveIntegerField(default=0)
    reference = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "drift reference (first served records)"
        constraints = [
            models.UniqueConstraint(fields=["model"], name="modelapp_driftref_model")
        ]

    def __str__(self) -> str:
        return f"first {self.records} served records"
