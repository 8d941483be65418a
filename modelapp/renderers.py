"""Predictions -> response body: one renderer per media type, chosen by the Accept header.

Renderers render error bodies too (``{"detail", "code"}``), in their own format where it
can carry text, else as JSON with ``error_media_type``. No ``; charset=`` is ever added to
the Content-Type: an inference pipeline passes it verbatim to the next container.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import orjson
from rest_framework.renderers import BaseRenderer

from modelapp import formats
from modelapp.batch import ChunkedPredictions, KeyedPredictions

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# Rows rendered at a time from a chunked body's predictions (``render_each``).
RENDER_ROWS = 1 << 16


def to_jsonable(predictions: np.ndarray) -> Any:
    """orjson serialises numeric arrays natively (NaN -> null); others go through lists."""
    if predictions.dtype.kind in "fiub" and predictions.flags.c_contiguous:
        return predictions
    return predictions.tolist()


def dump_json(value: Any) -> bytes:
    """JSON that is always valid: NaN and infinity become null."""
    if isinstance(value, np.ndarray):
        value = to_jsonable(value)
    return orjson.dumps(
        value, option=_NUMPY | orjson.OPT_NON_STR_KEYS, default=_default
    )


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class BaseBatchRenderer(BaseRenderer):
    """Renders a prediction array (or a plain document, or an error) as ``media_type``.

    Subclasses set ``media_type`` and ``format`` and implement ``render_predictions``;
    ``render_error`` defaults to JSON, announced by ``error_media_type``. Named outputs
    (``SAGEMAKER_INFERENCE_OUTPUT``, ``outputs.KeyedPredictions``) go to
    ``render_keyed``, for formats whose ``keyed_refusal`` lets them. A chunked
    body's predictions (``ChunkedPredictions``) go to ``render_chunks``, which renders
    the whole by default; a format whose records are independent lines writes each
    chunk as it would have written its rows of the whole, one buffer for all.
    """

    media_type: str = ""
    format: str = ""
    charset = None
    error_media_type = formats.JSON

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Any = None,
    ) -> bytes:
        response = (renderer_context or {}).get("response")
        if response is not None and getattr(response, "exception", False):
            return self.render_error(data)
        if isinstance(data, np.ndarray):
            return self.render_predictions(data)
        if isinstance(data, ChunkedPredictions):
            return self.render_chunks(data)
        if isinstance(data, KeyedPredictions):
            return self.render_keyed(data)
        if hasattr(data, "as_format"):  # a result that writes itself in each format
            return bytes(data.as_format(self.format))
        return dump_json(data)

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        """Why this format cannot carry ``keyed``'s outputs (the view answers 406 with
        it), or None when ``render_keyed`` writes them."""
        return (
            f"{self.media_type} cannot carry the outputs SAGEMAKER_INFERENCE_OUTPUT "
            f"names ({', '.join(keyed.keys)}): ask for text/csv, application/json or "
            "application/jsonlines."
        )

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        raise NotImplementedError(".render_keyed() must be overridden.")

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        raise NotImplementedError(".render_predictions() must be overridden.")

    def render_chunks(self, chunks: ChunkedPredictions) -> bytes:
        """The bytes ``render_predictions`` gives for the whole of ``chunks``."""
        return self.render_predictions(chunks.whole())

    def render_each(self, chunks: ChunkedPredictions) -> bytes:
        """``render_predictions`` of each run of ``RENDER_ROWS`` rows of each chunk,
        joined: for formats whose records are independent lines (the Python objects
        of a run's lines are made and freed before the next's)."""
        return b"".join(
            self.render_predictions(part[start : start + RENDER_ROWS])
            for part in chunks.parts
            for start in range(0, len(part), RENDER_ROWS)
        )

    def render_error(self, error: dict[str, str]) -> bytes:
        return dump_json(error)


class JSONRenderer(BaseBatchRenderer):
    """``application/json``: ``{"predictions": [...]}``, one entry per record."""

    media_type = formats.JSON
    format = "json"

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        return dump_json({"predictions": to_jsonable(predictions)})

    def render_chunks(self, chunks: ChunkedPredictions) -> bytes:
        # Each chunk's list without its brackets: the whole list's items, in order.
        items = (dump_json(part)[1:-1] for part in chunks.parts)
        return b'{"predictions":[' + b",".join(items) + b"]}"

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        return None

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        """``{"predictions": [{key: value, ...}, ...]}``, keys in the order asked."""
        return dump_json({"predictions": keyed.objects()})


class JSONLinesRenderer(BaseBatchRenderer):
    """``application/jsonlines``: one JSON value per line, one line per record."""

    media_type = formats.JSONLINES
    format = "jsonl"
    error_media_type = formats.JSONLINES

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        return b"".join(dump_json(row) + b"\n" for row in to_jsonable(predictions))

    render_chunks = BaseBatchRenderer.render_each

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        return None

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        """One ``{key: value, ...}`` object per line (Clarify's ``LabelAttribute`` and
        ``ProbabilityAttribute`` name its keys)."""
        return b"".join(dump_json(item) + b"\n" for item in keyed.objects())

    def render_error(self, error: dict[str, str]) -> bytes:
        return dump_json(error) + b"\n"


class CSVRenderer(BaseBatchRenderer):
    """``text/csv``: one line per record, a label or a comma-joined row of scores."""

    media_type = formats.CSV
    format = "csv"
    error_media_type = formats.CSV

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        rows = predictions.tolist()
        if predictions.dtype.kind in "fiub":
            if predictions.ndim == 1:
                return ("\n".join(map(repr, rows)) + "\n").encode()
            return "".join(",".join(map(repr, row)) + "\n" for row in rows).encode()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(rows if predictions.ndim == 2 else ([row] for row in rows))
        return out.getvalue().encode()

    render_chunks = BaseBatchRenderer.render_each

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        return None

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        """One line per record, the keys' values in order (Clarify's ``LabelIndex`` and
        ``ProbabilityIndex`` count them); a list is one field in Python's list notation,
        as Autopilot writes it: ``1,0.1,"[0.9, 0.1]","[0, 1]"``."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(
            [str(value) if isinstance(value, list) else value for value in row]
            for row in keyed.rows()
        )
        return out.getvalue().encode()

    def render_error(self, error: dict[str, str]) -> bytes:
        return (error["detail"] + "\n").encode()


class NPYRenderer(BaseBatchRenderer):
    """``application/x-npy``: ``numpy.save`` of the predictions (never pickled)."""

    media_type = formats.NPY
    format = "npy"

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        if predictions.dtype.kind == "O":
            predictions = np.asarray(predictions.tolist())
        buffer = io.BytesIO()
        np.save(buffer, predictions, allow_pickle=False)
        return buffer.getvalue()

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        keys = keyed.keys
        if len(keys) == 1 and keyed.columns[keys[0]].dtype.kind in "fiub":
            return None
        return (
            f"{self.media_type} carries one output of numbers, but "
            f"SAGEMAKER_INFERENCE_OUTPUT names {', '.join(keys)}"
            + ("" if len(keys) > 1 else " (labels that are text)")
            + ": ask for text/csv, application/json or application/jsonlines."
        )

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        """The one key's values: a value per record, or a row per record."""
        return self.render_predictions(keyed.array())
