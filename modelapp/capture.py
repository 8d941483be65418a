"""Sampled capture for drift: a share of the served records counted into the reference's
bins, per model and hour, flushed to ``DriftCount`` off the request path.

The request path pays one attribute check when capture is off
(``SMSERVE['CAPTURE_PERCENT']`` = 0, the default: no sampler is attached to any model),
and one random number when it is on; a sampled request's input (the checked matrix or
frame the model was given) and its result are appended to a bounded queue, by reference,
nothing copied. The stats flusher thread (``stats.StatsCollector.flush``) drains the queue,
counts each record into the bins (``drift.py``) and writes the hour's counts, one row per
model, hour and worker process, so no two writers ever touch the same row. A database
outage keeps the counts in memory for the next flush; a full queue drops samples (a
sample is a sample), never waits.

A model without training distributions (trained elsewhere, or a ``metadata.json`` older
than version 3) takes its first ``SMSERVE['DRIFT_REFERENCE_RECORDS']`` sampled records as
its reference (``DriftReference``, source ``served``): the first worker to collect them
writes it, every worker then counts against that one.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.db import DatabaseError, close_old_connections, transaction

from modelapp import conf, drift
from modelapp.metadata import NUMERIC, Feature, json_safe
from modelapp.periodic import discard_connection

logger = logging.getLogger(__name__)

# Sampled requests waiting for the flusher; more are dropped until it catches up.
QUEUE_LIMIT = 512
Key = tuple[str, int]  # model sha256, hour start (epoch seconds)


class Sampler:
    """One model's capture in one process: attached to its predictor by the registry."""

    def __init__(
        self,
        sha256: str,
        percent: float,
        reference: dict[str, Any] | None,
        features: list[Feature],
        classes: list[Any] | None,
    ) -> None:
        self.sha256 = sha256
        self.rate = percent / 100.0
        self.reference = reference
        self.features = features
        self.classes = classes
        # Records kept to build a served reference from, until there are enough.
        self.first: list[tuple[Any, Any, str]] = []
        self.first_records = 0
        self.random = random.random

    # --- the request path ---------------------------------------------------------------
    def offer(self, matrix: Any, result: Any, method: str) -> None:
        """Queue one answered batch, if it is sampled; no counting, no I/O."""
        if self.random() >= self.rate:
            return
        if len(collector.queue) < QUEUE_LIMIT:
            collector.queue.append((self, matrix, result, method))

    # --- the flusher thread -------------------------------------------------------------
    def count(self, matrix: Any, result: Any, method: str) -> dict[str, Any] | None:
        """One batch's counts in the reference's bins (None while there is none)."""
        if self.reference is None:
            if self.first_records < int(conf.get("DRIFT_REFERENCE_RECORDS")):
                self.first.append((matrix, result, method))
                self.first_records += len(matrix)
            return None
        features: dict[str, Any] = {}
        for position, feature in enumerate(self.reference["features"]):
            distribution = feature.get("distribution")
            if distribution:
                features[str(position)] = drift.count_feature(
                    feature["kind"], distribution, drift.column(matrix, position)
                )
        outputs = drift.count_outputs(
            self.reference.get("outputs") or {}, method, result
        )
        return {
            "records": len(matrix),
            "features": features,
            "outputs": {k: v for k, v in outputs.items() if v is not None},
        }

    def served_reference(self) -> dict[str, Any] | None:
        """The reference built from the first records, once there are enough."""
        if self.first_records < int(conf.get("DRIFT_REFERENCE_RECORDS")):
            return None
        matrices = [m for m, _, _ in self.first]
        matrix = _concat(matrices)
        outputs: dict[str, Any] = {}
        for method in ("predict", "predict_proba"):
            results = [np.asarray(r) for _, r, m in self.first if m == method]
            if results:
                outputs[method] = np.concatenate(results)
        return drift.build_reference(
            matrix, self.features, outputs, self.classes, drift.SERVED
        )


def _stack(results: list[Any]) -> Any:
    if any(r is None for r in results):
        return None
    return np.concatenate([np.asarray(r) for r in results])


def _concat(matrices: list[Any]) -> Any:
    if len(matrices) == 1:
        return matrices[0]
    if hasattr(matrices[0], "concat"):  # a table's columns (``schema.Columns``)
        return type(matrices[0]).concat(matrices)
    if hasattr(matrices[0], "iloc"):
        import pandas as pd

        return pd.concat(matrices, ignore_index=True)
    return np.vstack([np.asarray(m, dtype=np.float64) for m in matrices])


def sampler_for(sha256: str, predictor: Any) -> Sampler | None:
    """A sampler for a loaded model, or None when capture is off."""
    percent = float(conf.get("CAPTURE_PERCENT"))
    if percent <= 0:
        return None
    metadata = getattr(predictor, "metadata", None)
    schema = getattr(predictor, "schema", None)
    features = list(getattr(schema, "features", None) or [])
    width = getattr(predictor, "n_features", None)
    if not features and width:
        features = [Feature(kind=NUMERIC) for _ in range(width)]
    classes = getattr(predictor.model, "classes_", None)
    return Sampler(
        sha256,
        min(percent, 100.0),
        drift.reference_of(metadata),
        features,
        [c.item() if hasattr(c, "item") else c for c in classes]
        if classes is not None
        else None,
    )


class CaptureCollector:
    """One per process: the queue the samplers fill, and the hours' counts."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Sampler, Any, Any, str]] = deque()
        self.counts: dict[Key, dict[str, Any]] = {}
        # Served references built here, not yet written.
        self.references: dict[str, Sampler] = {}
        self._writer: tuple[int, str] | None = None
        self._lock = threading.Lock()

    @property
    def writer(self) -> str:
        """This process's name on its rows (new in each forked worker)."""
        if self._writer is None or self._writer[0] != os.getpid():
            self._writer = (os.getpid(), uuid.uuid4().hex)
        return self._writer[1]

    def drain(self, now: float | None = None) -> None:
        """Count what the samplers queued (the flusher's CPU, not a request's): the
        batches of one model and method at once, so many small requests cost one
        count."""
        hour = int(time.time() if now is None else now) // 3600 * 3600
        groups: dict[tuple[int, str], tuple[Sampler, list[Any], list[Any]]] = {}
        while True:
            try:
                sampler, matrix, result, method = self.queue.popleft()
            except IndexError:
                break
            group = groups.setdefault((id(sampler), method), (sampler, [], []))
            group[1].append(matrix)
            group[2].append(result)
        for (_, method), (sampler, matrices, results) in groups.items():
            try:
                counted = sampler.count(_concat(matrices), _stack(results), method)
            except (ValueError, TypeError, IndexError, KeyError):
                # Batches the bins cannot read (a column of another type than training
                # said): lost samples, never a lost request.
                logger.warning("Sampled batches were not counted.", exc_info=True)
                continue
            if counted is None:  # still collecting a served reference
                self.references[sampler.sha256] = sampler
                continue
            key = (sampler.sha256, hour)
            self.counts[key] = drift.add(self.counts.get(key, {}), counted)

    def flush(self) -> bool:
        """Count, then write the counts; on a database error keep them and say so."""
        with self._lock:
            self.drain()
            self._write_references()
            taken, self.counts = self.counts, {}
            if not taken:
                return True
            try:
                close_old_connections()  # as the stats do: a fresh one after an outage
                write_counts(taken, self.writer)
            except Exception as exc:
                for key, counted in taken.items():
                    self.counts[key] = drift.add(self.counts.get(key, {}), counted)
                records = sum(int(c.get("records", 0)) for c in taken.values())
                # An outage is expected and only logged; anything else is a bug and
                # gets its traceback, but must not stop the stats flush that runs it.
                if isinstance(exc, DatabaseError):
                    logger.warning(
                        "Drift counts not flushed (%s: %s); %d record(s) kept for the "
                        "next flush.",
                        type(exc).__name__,
                        exc,
                        records,
                    )
                else:
                    logger.exception(
                        "Drift counts not flushed; %d record(s) kept.", records
                    )
                discard_connection()
                return False
            return True

    def _write_references(self) -> None:
        """A served reference, once a sampler has its first records: written if no
        worker wrote one first, then the one in the database is every worker's."""
        from modelapp.models import DriftReference

        for sha256, sampler in list(self.references.items()):
            try:
                row = DriftReference.objects.filter(model_id=sha256).first()
                if row is None:
                    built = sampler.served_reference()
                    if built is None:
                        continue
                    row, _ = DriftReference.objects.get_or_create(
                        model_id=sha256,
                        defaults={
                            "records": sampler.first_records,
                            "reference": json_safe(built),
                        },
                    )
            except DatabaseError:
                discard_connection()
                return
            sampler.reference = row.reference
            sampler.first = []
            del self.references[sha256]


def write_counts(counts: dict[Key, dict[str, Any]], writer: str) -> None:
    """Add ``counts`` to this writer's rows (only this process writes them)."""
    from modelapp.models import DriftCount

    with transaction.atomic():
        for (sha256, hour_epoch), counted in counts.items():
            hour = datetime.fromtimestamp(hour_epoch, UTC)
            row, created = DriftCount.objects.select_for_update().get_or_create(
                model_id=sha256,
                hour=hour,
                writer=writer,
                defaults={"records": 0, "counts": {}},
            )
            row.records += int(counted.get("records", 0))
            row.counts = drift.add(row.counts or {}, counted)
            row.save(update_fields=["records", "counts"])


collector = CaptureCollector()
