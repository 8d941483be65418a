"""``Batch``: the records of one request, as the parsers hand them to the predictors.

The core type of the serving path, independent of HTTP and of any one format: parsers
(``parsers.py``) make batches from bytes, predictors (``predictors/``) check them against
the model and predict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelapp.exceptions import InvalidInput
from modelapp.text import brief


@dataclass
class Batch:
    """Records from one request, in order.

    Exactly one of ``values``, ``rows`` and ``records`` is set. ``values`` is a float
    array, 2-D (records x features) or 1-D when the body was a flat list (``flat``): one
    record, or one value per record for a single-feature model, which only the model can
    tell apart. ``rows`` holds the fields as sent (CSV text, JSON scalars) when they are
    not all numbers: text is for the model's schema to accept or refuse (the predictor's
    job), so a parser never converts it; a flat list of them is ``rows=[items]`` with
    ``flat``; CSV's are a 2-D object array (a pointer per field). ``records`` holds
    ``{feature: value}`` objects, or a ``RecordTable`` when they are all numbers under
    the same keys. ``columns`` are a CSV header's names.

    A body larger than a chunk sets ``chunks`` instead (``Chunks``): its records are
    read a chunk at a time, each chunk a ``Batch`` whose ``offset`` is the number of
    records before it and ``total`` the records of the whole body.
    """

    values: np.ndarray | None = None
    records: list[dict[str, Any]] | RecordTable | None = None
    columns: list[str] | None = None
    rows: list[list[Any]] | np.ndarray | None = None
    flat: bool = False
    chunks: Chunks | None = None
    offset: int = 0
    total: int | None = None

    def __post_init__(self) -> None:
        if self.values is not None and self.values.ndim == 1:
            self.flat = True

    def __len__(self) -> int:
        if self.chunks is not None:
            return self.chunks.records
        if self.records is not None:
            return len(self.records)
        if self.flat:
            return 1
        if self.values is not None:
            return len(self.values)
        return len(self.rows) if self.rows is not None else 0


def batch_of_rows(
    rows: list[list[Any]], columns: list[str] | None = None, flat: bool = False
) -> Batch:
    """Rows of fields -> a float batch when every field is a number (blank: NaN), else
    the fields as sent, for the predictor to read by the model's schema."""
    check_widths(rows)
    try:
        values = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        try:
            values = to_float_rows(rows, "a record")
        except NotANumber:
            check_fields(rows)
            return Batch(rows=rows, columns=columns, flat=flat)
    if values.ndim != 2:
        raise nested_arrays("a record")
    return Batch(values=values[0] if flat else values, columns=columns)


def nested_arrays(what: str) -> InvalidInput:
    # Records of equal-width arrays, e.g. [[[1, 2]]]: numpy reads them as 3-D.
    return InvalidInput(
        f"Record 1 holds nested arrays; {what} must be a flat list of numbers."
    )


def check_fields(rows: list[list[Any]]) -> None:
    """A field is a number, text or missing; an array or object in it is no table cell."""
    for number, row in enumerate(rows, 1):
        for column, value in enumerate(row, 1):
            if isinstance(value, (list, dict)):
                kind = "an array" if isinstance(value, list) else "an object"
                raise InvalidInput(
                    f"Record {number}, feature {column} is {kind}; a record's fields "
                    "are numbers or text."
                )


def check_widths(rows: list[list[Any]] | np.ndarray) -> None:
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        first = len(rows[0])
        for number, row in enumerate(rows, 1):
            if len(row) != first:
                raise InvalidInput(
                    f"Every record must have the same number of features: record 1 has "
                    f"{first}, record {number} has {len(row)}."
                )


class NotANumber(InvalidInput):
    """A field where the model takes a number; a model whose schema allows text there
    reads the batch as a table instead."""


def to_float_rows(
    rows: list[list[Any]] | np.ndarray, what: str, names: list[str] | None = None
) -> np.ndarray:
    """Rows of equal width -> float array; blank CSV fields and JSON nulls are missing
    values (NaN). ``names`` label the features in an error (else their position)."""
    check_widths(rows)
    try:
        values = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        pass
    else:
        if values.ndim == 2:
            return values
        raise nested_arrays(what)
    for number, row in enumerate(rows, 1):
        for column, value in enumerate(row, 1):
            if value is None or (isinstance(value, str) and value.strip() == ""):
                continue
            try:
                float(value)
            except (ValueError, TypeError):
                feature = repr(names[column - 1]) if names else column
                raise NotANumber(
                    f"Record {number}, feature {feature}: {brief(value)} is not a number; "
                    f"{what} must hold numbers only."
                ) from None
    # Only blank fields were in the way: they are missing values.
    return np.array(
        [[np.nan if _blank(v) else v for v in row] for row in rows],
        dtype=np.float64,
    )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class RecordTable:
    """Records as objects that all have the same keys and numbers (or nulls) for
    values, held as one float array (``values``, a column per key) instead of a dict per
    record: ``Batch.records`` of a large numeric body."""

    def __init__(self, keys: list[str], values: np.ndarray) -> None:
        self.keys = keys
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def in_order(self, names: list[str]) -> np.ndarray:
        """The values with their columns in the order of ``names``, the same keys."""
        if self.keys == names:
            return self.values
        return self.values[:, [self.keys.index(name) for name in names]]


class Declined(Exception):
    """A chunk the fast path cannot read: the whole body goes to the general parser,
    as it would in one pass."""


class Chunks:
    """A large body's records, parsed a chunk of records at a time, so that a worker's
    memory grows with a chunk, not with the body (``BasePredictor.predict``).

    ``blocks()`` yields the chunks' batches (of ``values``) in order and raises ``Declined`` at one
    the fast path cannot read; ``general()`` then reads the whole body in one pass with
    the general parser, whose values and error messages are the one-pass answer.
    ``records`` is the body's record count, known before the first chunk is read (a
    fast path's records are its lines).
    """

    def __init__(
        self,
        blocks: Callable[[], Iterator[Batch]],
        general: Callable[[], Batch],
        records: int,
    ) -> None:
        self.blocks = blocks
        self.general = general
        self.records = records

    def __iter__(self) -> Iterator[Batch]:
        offset = 0
        for block in self.blocks():
            block.offset, block.total = offset, self.records
            offset += len(block)
            yield block

    def whole(self) -> Batch:
        """The body as one batch, exactly as one pass reads it (for a consumer that
        takes the records at once, e.g. a script's default ``input_fn``)."""
        try:
            parts = list(self)
        except Declined:
            return self.general()
        values = np.concatenate([p.values for p in parts if p.values is not None])
        return Batch(values=values, columns=parts[0].columns)


# Every message about one record starts so (``InvalidInput`` of the predictors).
_RECORD = re.compile(r"Record (\d+)")


def renumbered(exc: InvalidInput, offset: int) -> InvalidInput:
    """``exc`` raised for a chunk, naming its record by its number in the whole body."""
    detail = str(exc.detail)
    found = _RECORD.match(detail)
    if not offset or found is None:
        return exc
    number = int(found.group(1)) + offset
    code = getattr(exc.detail, "code", None)
    return InvalidInput(f"Record {number}{detail[found.end() :]}", code=code)


class ChunkedPredictions:
    """The predictions of a chunked body, one array per chunk, as one result: every
    part in the dtype the whole would have had (``numpy.promote_types`` of theirs), so
    a renderer writes each part as it would have written its rows of the whole. Labels
    are kept in the smallest integer type that holds them until then (lossless: their
    range decides it), so a body of many short records does not keep eight bytes per
    record for its answer."""

    def __init__(self) -> None:
        self.dtype: np.dtype | None = None
        self._parts: list[np.ndarray] = []

    def append(self, part: np.ndarray) -> None:
        whole = part.dtype
        self.dtype = (
            whole if self.dtype is None else np.promote_types(self.dtype, whole)
        )
        if whole.kind in "iu" and part.size:
            small = np.result_type(
                np.min_scalar_type(part.min()), np.min_scalar_type(part.max())
            )
            part = part.astype(small, copy=False)
        self._parts.append(part)

    def clear(self) -> None:
        self._parts.clear()

    def __len__(self) -> int:
        return sum(map(len, self._parts))

    @property
    def parts(self) -> Iterator[np.ndarray]:
        """Each chunk's predictions, in the whole's dtype."""
        for part in self._parts:
            yield part.astype(self.dtype, copy=False)

    def whole(self) -> np.ndarray:
        return np.concatenate(list(self.parts))


@dataclass
class KeyedPredictions:
    """One invocation's answer under the keys a deployment named
    (``SAGEMAKER_INFERENCE_OUTPUT``, ``outputs.py``): ``columns[key]`` holds one value
    per record (1-D) or one row per record (2-D); ``labels`` is one row for all
    records."""

    keys: tuple[str, ...]
    columns: dict[str, np.ndarray]
    records: int

    def __len__(self) -> int:
        return self.records

    def rows(self) -> list[list[Any]]:
        """Each record's values in key order, as Python values (lists for rows)."""
        columns = []
        for key in self.keys:
            column = self.columns[key]
            if key == "labels":
                columns.append([column.tolist()] * self.records)
            else:
                columns.append(column.tolist())
        return [list(values) for values in zip(*columns, strict=True)]

    def objects(self) -> list[dict[str, Any]]:
        """Each record as ``{key: value}``, keys in order."""
        return [dict(zip(self.keys, row, strict=True)) for row in self.rows()]

    def array(self) -> np.ndarray:
        """The one key's values as an array, a row per record (NPY)."""
        (key,) = self.keys
        column = self.columns[key]
        if key == "labels":
            return np.tile(column, (self.records, 1))
        return column
