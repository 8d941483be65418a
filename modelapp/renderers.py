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
from modelapp.batch import ChunkedPredictions

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
    ``render_error`` defaults to JSON, announced by ``error_media_type``. A chunked
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
        if hasattr(data, "as_format"):  # a result that writes itself in each format
            return bytes(data.as_format(self.format))
        return dump_json(data)

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


class JSONLinesRenderer(BaseBatchRenderer):
    """``application/jsonlines``: one JSON value per line, one line per record."""

    media_type = formats.JSONLINES
    format = "jsonl"
    error_media_type = formats.JSONLINES

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        return b"".join(dump_json(row) + b"\n" for row in to_jsonable(predictions))

    render_chunks = BaseBatchRenderer.render_each

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
