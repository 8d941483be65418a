"""A featurizer's answer as the next container's input, and its label pass-through.

In JSON Lines a featurizer answers ``{"features": [...]}`` per record, the record shape
SageMaker Clarify's ``ContentTemplate`` makes, which smserve's JSON Lines parser reads as
a positional record (the key is ``SMSERVE_JSONLINES_FEATURES_KEY``; empty: plain
arrays): a featurizer's JSON Lines answer is the next smserve container's request as it
is.

A featurizer (a model with ``transform`` and no ``predict``) is the first container of an
inference pipeline; the classifier behind it is trained on the featurizer's output. To
make that training set, a batch transform runs the labelled training data through the
featurizer, and the label must come out beside the features. With
``SMSERVE_PASS_THROUGH_LABEL`` on, a batch whose records carry one field more than the
model takes has that field taken out before ``transform`` and put back first in each
answer row: label first, then the features, the layout ``train`` reads by default (and
SageMaker's built-in algorithms). A batch of exactly the model's width is transformed as
it is, so the same deployment serves an endpoint too.

Which field is the label: the training job's label column (``metadata.json``'s
``target``) by name for records with names (JSON objects, a CSV header), by position for
a table trained without a header; else the first field.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from modelapp.batch import Batch, ChunkedPredictions, RecordTable
from modelapp.metadata import ModelMetadata


def as_feature_records(predictions: Any, key: str) -> Any:
    """``transform``'s rows as ``{key: row}`` objects, one per record (a chunked body's
    chunk by chunk), which the JSON Lines renderer writes a line each."""
    if isinstance(predictions, ChunkedPredictions):
        records = ChunkedPredictions()
        for part in predictions.parts:
            records.append(_feature_records(part, key))
        return records
    return _feature_records(predictions, key)


def _feature_records(rows: np.ndarray, key: str) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows.reshape(len(rows), -1).tolist()):
        out[i] = {key: row}
    return out


def split_label(
    batch: Batch, n_features: int | None, metadata: ModelMetadata | None
) -> tuple[Batch, Any]:
    """``batch`` without its label column, and the column (one value per record);
    ``(batch, None)`` when the records carry no label (they have the model's width)."""
    target = metadata.target if metadata is not None else None
    if n_features is None or batch.flat or batch.chunks is not None:
        return batch, None
    if batch.records is not None:
        return _split_records(batch, n_features, target)
    fields = batch.values if batch.values is not None else batch.rows
    if fields is None or not len(fields) or _width(fields) != n_features + 1:
        return batch, None
    columns = batch.columns
    if columns is not None and isinstance(target, str) and target in columns:
        position = columns.index(target)
    elif columns is None and isinstance(target, int) and 0 <= target <= n_features:
        position = target
    else:
        position = 0
    if columns is not None:
        columns = columns[:position] + columns[position + 1 :]
    rest: Any
    label: Any
    if isinstance(fields, np.ndarray):
        label = fields[:, position]
        rest = np.delete(fields, position, axis=1)
    else:
        label = [row[position] for row in fields]
        rest = [row[:position] + row[position + 1 :] for row in fields]
    if batch.values is not None:
        return replace(batch, values=rest, columns=columns), label
    return replace(batch, rows=rest, columns=columns), label


def _split_records(batch: Batch, n_features: int, target: Any) -> tuple[Batch, Any]:
    records = batch.records
    if not isinstance(target, str):
        return batch, None
    if isinstance(records, RecordTable):
        if target not in records.keys or len(records.keys) != n_features + 1:
            return batch, None
        position = records.keys.index(target)
        keys = records.keys[:position] + records.keys[position + 1 :]
        table = RecordTable(keys, np.delete(records.values, position, axis=1))
        return replace(batch, records=table), records.values[:, position]
    assert records is not None
    if not all(target in record for record in records):
        return batch, None
    label = [record[target] for record in records]
    rest = [{k: v for k, v in record.items() if k != target} for record in records]
    return replace(batch, records=rest), label


def _width(fields: Any) -> int:
    return fields.shape[1] if isinstance(fields, np.ndarray) else len(fields[0])


def with_label(label: Any, features: np.ndarray) -> np.ndarray:
    """Each record's label first, then its features: numbers stay a float array; a
    text label makes an object array, which every renderer writes field by field."""
    features = features.reshape(len(features), -1)
    column = np.asarray(label)
    if column.dtype.kind in "fiub" and features.dtype.kind in "fiub":
        return np.column_stack([column, features])
    out = np.empty((len(features), features.shape[1] + 1), dtype=object)
    out[:, 0] = column
    out[:, 1:] = features
    return out
