"""Parquet bodies on ``/invocations``: ``application/x-parquet`` (and the aliases
training reads, ``formats.ALIASES``) in and out.

pyarrow is imported inside the functions, when a Parquet body arrives or is asked for:
a numeric model's workers never map it otherwise (``tests/test_lean_imports.py``).

**In.** One record per row, the columns by name (``Batch.columns``): the predictor puts
them in the model's feature order, or takes them in the file's order for a model without
feature names, as it does a CSV header. A pandas index stored as a column
(``__index_level_0__``) is no feature, as training's ``pandas.read_parquet`` sees it.
Columns of numbers only (integers, floats, decimals; null is NaN) become one float
array; with any other column (text, category, boolean, dates) every field is kept as its
Python value in a 2-D object array, each distinct text once, and the model's input
schema reads it (``predictors/schema.py``): the kinds training gave the same columns.
Lists, structs, maps and binary columns are no table cells (400).

**Memory.** The body is read where it lies (``pyarrow.BufferReader``, no copy); before a
column is decoded, the footer's row and column counts are held to the parsed-size budget
(``parsers.parsed_budget``): a small file may hold a huge table. Parquet cannot be split
at line ends, but its footer says how many rows it holds and pyarrow decodes any run of
them: a numeric body whose floats would take more than a chunk (``SMSERVE_CHUNK_KB``) is
decoded and predicted a run of rows at a time (``batch.Chunks``). A body with
text columns is read whole, within the budget.

**Out.** A table with one row per record: one column ``prediction`` for a label or
value per record, else one float column per position, named ``"0"``, ``"1"``, ... (for
``predict_proba`` the classes in the model's order, as in a CSV row or a JSON list).
Labels of mixed types (text and numbers) are written as text. A chunked body's answer
is written whole, byte for byte the one-pass answer. Errors are JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from modelapp import formats
from modelapp.batch import Batch, Chunks, KeyedPredictions
from modelapp.exceptions import InvalidInput
from modelapp.parsers import BaseBatchParser, chunk_bytes, parsed_budget, too_large
from modelapp.renderers import BaseBatchRenderer
from modelapp.text import brief

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

MAGIC = b"PAR1"
# The column of a result with one value per record (``ParquetRenderer``).
PREDICTION = "prediction"
# For the budget: a field's pointer (or float), and the Python float a number becomes
# in a table with text columns; text is counted by the footer's uncompressed size.
CELL_BYTES = 8
FLOAT_OBJECT_BYTES = 24


class ParquetParser(BaseBatchParser):
    """``application/x-parquet``: one Parquet file, a record per row, by name."""

    media_type = formats.PARQUET
    format = "parquet"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        return read_parquet(data)


def read_parquet(data: bytes) -> Batch:
    """A Parquet body -> ``Batch`` (see the module docstring)."""
    if not (data.startswith(MAGIC) and data.endswith(MAGIC)):
        raise InvalidInput(
            "The body is not a Parquet file: it does not start and end with PAR1. Send "
            "a whole file, as pandas' to_parquet or pyarrow writes it."
        )
    with readable():
        return _read(data)


@contextmanager
def readable() -> Iterator[None]:
    """pyarrow's errors while a body is decoded as the request's: a 400 (a 413 when
    it runs out of memory). Around every decoding, the lazy runs of rows included."""
    import pyarrow as pa

    try:
        yield
    except MemoryError as exc:  # pyarrow's ArrowMemoryError is one too
        raise too_large("Parquet", parsed_budget()) from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        # ValueError: the file's own pandas metadata, JSON, may be broken too.
        raise InvalidInput(f"The body is not a readable Parquet file: {exc}.") from exc


def _read(data: bytes) -> Batch:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pre_buffer would copy column chunks through an I/O thread: the body is in memory.
    source = pa.BufferReader(data)
    footer = pq.ParquetFile(source, pre_buffer=False)
    schema = footer.schema_arrow
    names = _feature_names(schema)
    rows = footer.metadata.num_rows
    if not names:
        raise InvalidInput("The Parquet file has no columns: send one per feature.")
    if not rows:
        raise InvalidInput("The Parquet file has no rows: send one record per row.")
    fields = [schema.field(name) for name in names]
    for field in fields:
        if not _is_cell(field.type):
            raise InvalidInput(
                f"Column {brief(field.name)} holds {field.type}; a record's fields are "
                "numbers, text, booleans or dates."
            )
    numeric = all(_is_number(field.type) for field in fields)
    texts = [
        f.name
        for f in fields
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    budget = parsed_budget()
    cost = CELL_BYTES * rows * len(names)
    if not numeric:
        numbers = sum(_is_number(field.type) for field in fields)
        groups = range(footer.metadata.num_row_groups)
        cost += FLOAT_OBJECT_BYTES * rows * numbers
        cost += sum(footer.metadata.row_group(i).total_byte_size for i in groups)
    if cost > budget:
        raise too_large("Parquet", budget)
    # Text read as a dictionary: each distinct value decoded (and made a str) once.
    file = pq.ParquetFile(
        source, metadata=footer.metadata, read_dictionary=texts, pre_buffer=False
    )
    if numeric and CELL_BYTES * rows * len(names) > chunk_bytes():
        return _chunked(file, names, rows)
    table = file.read(columns=names, use_threads=False)
    if numeric:
        return Batch(values=_floats(table.columns, rows), columns=names)
    cells = np.empty((rows, len(names)), dtype=object)
    for j, column in enumerate(table.columns):
        cells[:, j] = _objects(column)
    return Batch(rows=cells, columns=names)


def _feature_names(schema: pa.Schema) -> list[str]:
    """The columns that are features, in the file's order; duplicates refused."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    names = [name for name in schema.names if name not in index]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(
                f"The Parquet file has two columns named {brief(name)}: name each "
                "feature once."
            )
        seen.add(name)
    return names


def _is_number(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


def _is_cell(kind: pa.DataType) -> bool:
    """Whether a column of ``kind`` holds one scalar per record."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _is_cell(kind.value_type)
    return not (
        pa.types.is_nested(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )


def _floats(columns: Iterable[Any], rows: int) -> np.ndarray:
    """Numeric columns -> one float array, a column per feature; null is NaN."""
    import pyarrow as pa

    columns = list(columns)
    values = np.empty((rows, len(columns)))
    for j, column in enumerate(columns):
        # safe=False: an integer beyond 2**53 becomes its nearest float, as in CSV.
        values[:, j] = column.cast(pa.float64(), safe=False).to_numpy(
            zero_copy_only=False
        )
    return values


def _objects(column: Any) -> np.ndarray:
    """One column -> its Python values (None for null); numbers as floats (NaN for
    null), texts shared between the records that hold the same one."""
    import pyarrow as pa

    kind = column.type
    if _is_number(kind):
        return (
            column.cast(pa.float64(), safe=False)
            .to_numpy(zero_copy_only=False)
            .astype(object)
        )
    if pa.types.is_dictionary(kind):
        column = column.unify_dictionaries().combine_chunks()
        values = np.array(column.dictionary.to_pylist() + [None], dtype=object)
        # Null indices point at the None after the dictionary's values.
        indices = column.indices.fill_null(len(column.dictionary))
        return values[indices.to_numpy(zero_copy_only=False)]
    return np.array(column.to_pylist(), dtype=object)


def _chunked(file: pq.ParquetFile, names: list[str], rows: int) -> Batch:
    """A numeric file a run of rows at a time, each run's floats about a chunk."""
    step = max(1, chunk_bytes() // (CELL_BYTES * len(names)))

    def blocks() -> Iterator[Batch]:
        with readable():
            runs = file.iter_batches(batch_size=step, columns=names, use_threads=False)
            for part in runs:
                yield Batch(values=_floats(part.columns, part.num_rows), columns=names)

    def whole() -> Batch:
        with readable():
            table = file.read(columns=names, use_threads=False)
        return Batch(values=_floats(table.columns, rows), columns=names)

    return Batch(chunks=Chunks(blocks, whole, rows))


class ParquetRenderer(BaseBatchRenderer):
    """``application/x-parquet``: a table of one row per record (module docstring)."""

    media_type = formats.PARQUET
    format = "parquet"

    # A chunked body's answer is written whole (``render_chunks``' default), so that
    # it is byte for byte the one-pass answer: the predictions are one value (or one
    # row of scores) per record, and a row group per chunk would change the file.
    def render_predictions(self, predictions: np.ndarray) -> bytes:
        return _written(_table(predictions))

    def keyed_refusal(self, keyed: KeyedPredictions) -> str | None:
        return None

    def render_keyed(self, keyed: KeyedPredictions) -> bytes:
        """A column per key, in the order named: a value per record, or a list per
        record (``probabilities``, ``labels``, ``transform``)."""
        import pyarrow as pa

        columns = {}
        for key in keyed.keys:
            values = keyed.columns[key]
            if key == "labels":
                values = np.tile(values, (keyed.records, 1))
            columns[key] = _array(values) if values.ndim == 1 else _lists(values)
        return _written(pa.table(columns))


def _written(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _table(predictions: np.ndarray) -> pa.Table:
    import pyarrow as pa

    if predictions.ndim == 1:
        return pa.table({PREDICTION: _array(predictions)})
    flat = predictions.reshape(len(predictions), math.prod(predictions.shape[1:]))
    return pa.table({str(j): _array(flat[:, j]) for j in range(flat.shape[1])})


def _lists(rows: np.ndarray) -> pa.Array:
    """A list per record (a row of ``rows``), of one type as ``_array`` makes it."""
    import pyarrow as pa

    flat = _array(rows.reshape(-1))
    width = rows.shape[1] if rows.ndim > 1 else 0
    return pa.FixedSizeListArray.from_arrays(flat, width).cast(pa.list_(flat.type))


def _array(values: np.ndarray) -> pa.Array:
    import pyarrow as pa

    if values.dtype.kind == "O":
        items = values.tolist()
        try:
            return pa.array(items)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            # Labels of mixed types (text and numbers): a column holds one type, and
            # text is what CSV and JSON Lines show of them too.
            return pa.array([None if item is None else str(item) for item in items])
    # A column of a 2-D array is strided; pyarrow wants its values in a row.
    return pa.array(np.ascontiguousarray(values))
