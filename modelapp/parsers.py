"""Request body -> ``Batch``: one parser per Content-Type, chosen by the negotiation class.

A parser only turns bytes into records, by serving's rules (``formats.py`` writes down
where they differ from training's); it does not know the model. Checks that need the
model (feature count, names, NaN support) happen in the predictor.
"""

from __future__ import annotations

import io
import math
import tokenize
from typing import IO, Any

import numpy as np
import orjson
from django.utils.http import parse_header_parameters
from rest_framework.parsers import BaseParser

from modelapp import conf, formats

# to_float_rows is re-exported for parsers of other formats (a plug-in's TSV, say).
from modelapp.batch import Batch, batch_of_rows, to_float_rows  # noqa: F401
from modelapp.exceptions import InvalidInput

JSON_SHAPES = '[[...], ...], {"instances": [...]} or {"inputs": [...]}'


class BaseBatchParser(BaseParser):
    """Reads a whole request body of ``media_type`` into a ``Batch``.

    Subclasses set ``media_type`` (and ``format``) and implement ``parse_bytes``; errors in
    the body raise ``InvalidInput`` with a message that says what was expected.
    """

    media_type: str = ""
    format: str = ""

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Any = None,
    ) -> Batch:
        _, params = parse_header_parameters(media_type or "")
        data = stream.read()
        # isspace, not strip: no copy of a 6 MB body (its fresh pages cost time).
        if not data or data.isspace():
            raise InvalidInput(
                f"The body is empty: send one or more records as {self.media_type}."
            )
        return self.parse_bytes(data, params)

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        raise NotImplementedError(".parse_bytes() must be overridden.")


class CSVParser(BaseBatchParser):
    """``text/csv``: one record per line; no header unless ``header=present``. Fields
    that are not all numbers stay text for the model's schema (``Batch.rows``)."""

    media_type = formats.CSV
    format = "csv"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        charset = params.get("charset", "utf-8")
        if charset.lower() in ASCII_CHARSETS and conf.fast_path("numeric_csv"):
            batch = parse_numeric_csv(
                data, params.get("header", "").lower() == "present"
            )
            if batch is not None:
                return batch
        try:
            text = data.decode(charset)
        except (LookupError, UnicodeError) as exc:
            # UnicodeError, not only its UnicodeDecodeError: punycode, idna and
            # undefined raise the base class on bytes they cannot read.
            raise InvalidInput(f"The CSV body is not valid {charset}: {exc}.") from exc
        try:
            rows = formats.csv_rows(text)
        except formats.FormatError as exc:
            raise InvalidInput(
                f"{exc.reason}: send one record per line, fields quoted with double "
                "quotes where they hold commas or line breaks."
            ) from exc
        columns = None
        if params.get("header", "").lower() == "present" and rows:
            columns = [name.strip() for name in rows.pop(0)]
        if not rows:
            raise InvalidInput("The CSV body has no records: send one record per line.")
        for number, row in enumerate(rows, 1):
            if len(row) == 1 and not row[0].strip():
                raise InvalidInput(
                    f"Record {number} is a blank line: send one record per line."
                )
        if columns is not None and len(columns) != len(rows[0]):
            raise InvalidInput(
                f"The CSV header names {len(columns)} columns but record 1 has {len(rows[0])}."
            )
        return batch_of_rows(rows, columns)


ASCII_CHARSETS = {"utf-8", "utf8", "ascii", "us-ascii", "iso-8859-1", "latin-1"}
# Bytes per orjson call: the float objects of one chunk are freed before the next is
# parsed, so their memory is reused warm instead of 6 MB of fresh pages.
CSV_CHUNK_BYTES = 1 << 16
# Closes every line in the JSON text; a body holding this value itself takes the general
# parser (it would be counted as a line end), which reads it correctly.
LINE_END = 7e307
_LINE_END_JSON = b"7e307"
# A quote (a JSON string), t, f and n (true, false, null) would read as numbers or NaN.
FORBIDDEN_BYTES = (b'"', b"t", b"f", b"n")
WHITESPACE = b" \t\n\r\x0b\x0c"


def parse_numeric_csv(data: bytes, header: bool) -> Batch | None:
    """The common case, fast: unquoted numeric CSV, every field a JSON number.

    Each chunk of whole lines becomes one flat JSON array with ``LINE_END`` after every
    line (two ``bytes.replace``); orjson parses it, numpy reads the floats, and the
    markers must then fill exactly the last column: so every line had the same width.
    No Python code runs per line or per value. Anything else (a blank field or line, a
    ragged row, ``true``, a quote, ``nan``, ``+1``, ``.5``, a letter) fails in orjson
    or numpy or the marker check, and the general parser answers, with its own values
    and error messages. One difference: JSON reads ``-0`` as the integer 0, so it becomes
    0.0 rather than -0.0 (equal under ``==``, so no comparison or sum changes).
    """
    columns = None
    if header:
        first, _, data = data.partition(b"\n")
        if not first.isascii() or b'"' in first:
            return None
        columns = [name.strip() for name in first.decode().split(",")]
    # Trailing blank lines end the body; found in place (a 6 MB copy costs page faults).
    stop = len(data)
    while stop and data[stop - 1] in WHITESPACE:
        stop -= 1
    # JSON strings and the literals true/false/null would read as numbers or NaN;
    # brackets, NaN and anything else are refused by orjson or numpy below.
    if not stop or any(char in data for char in FORBIDDEN_BYTES):
        return None
    if b"\r" in data:
        data = data[:stop].replace(b"\r\n", b"\n")
        stop = len(data)
        if b"\r" in data:
            return None
    newline = data.find(b"\n", 0, stop)
    width = data.count(b",", 0, newline if newline >= 0 else stop) + 1
    line_end = b"," + _LINE_END_JSON + b","
    tables = []
    start = 0
    try:
        while start < stop:
            end = data.find(b"\n", start + CSV_CHUNK_BYTES, stop)
            end = stop if end < 0 else end
            text = data[start:end].replace(b"\n", line_end)
            items = orjson.loads(b"".join((b"[", text, line_end[:-1], b"]")))
            values = np.fromiter(items, np.float64, len(items))
            if len(values) % (width + 1):
                return None
            table = values.reshape(-1, width + 1)
            if (table[:, width] != LINE_END).any() or (
                np.count_nonzero(values == LINE_END) != len(table)
            ):
                return None
            tables.append(table[:, :width])
            start = end + 1
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if columns is not None and len(columns) != width:
        return None
    out = tables[0].copy() if len(tables) == 1 else np.concatenate(tables)
    return Batch(values=out, columns=columns)


def batch_from_items(items: list[Any], where: str) -> Batch:
    """A decoded JSON list -> Batch: rows (lists), records (objects) or a flat list."""
    if not items:
        raise InvalidInput(f"{where} holds no records: send at least one.")
    kinds = {type(item) for item in items}
    if kinds == {list}:
        return batch_of_rows(items)
    if kinds == {dict}:
        return Batch(records=items)
    if not kinds & {list, dict}:
        return batch_of_rows([items], flat=True)
    raise InvalidInput(
        f"{where} mixes records of different kinds: send all arrays or all objects."
    )


class JSONParser(BaseBatchParser):
    """``application/json``: ``[[...]]``, ``{"instances"}``, ``{"inputs"}``, or records as
    objects; several documents one per line (batch transform, ``SplitType=Line``) are read
    as JSON Lines."""

    media_type = formats.JSON
    format = "json"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if b"\n" in data.strip():
                return parse_json_lines(data)
            raise InvalidInput(f"The body is not valid JSON: {exc}.") from exc
        if isinstance(document, dict):
            for key in ("instances", "inputs"):
                if key in document:
                    if not isinstance(document[key], list):
                        raise InvalidInput(f'"{key}" must be a list of records.')
                    return batch_from_items(document[key], f'"{key}"')
            raise InvalidInput(
                f"Unknown JSON shape: an object with keys {sorted(document)[:10]}; "
                f"expected {JSON_SHAPES}."
            )
        if isinstance(document, list):
            return batch_from_items(document, "The JSON list")
        raise InvalidInput(
            f"Unknown JSON shape: a {type(document).__name__}; expected {JSON_SHAPES}."
        )


def parse_json_lines(data: bytes) -> Batch:
    """One record per line: an array of numbers, an object of features, or one number
    (serving's rule: a record of one feature; ``formats.py``)."""
    try:
        items = formats.json_lines(data)
    except formats.FormatError as exc:
        raise InvalidInput(f"{exc.reason}.") from exc
    records = [item if isinstance(item, (list, dict)) else [item] for _, item in items]
    return batch_from_items(records, "The JSON Lines body")


class JSONLinesParser(BaseBatchParser):
    """``application/jsonlines``: one JSON array (or object) per line, one record each."""

    media_type = formats.JSONLINES
    format = "jsonl"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        return parse_json_lines(data)


class NPYParser(BaseBatchParser):
    """``application/x-npy``: an array saved by ``numpy.save``; pickled objects refused."""

    media_type = formats.NPY
    format = "npy"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        if not data.startswith(b"\x93NUMPY"):
            raise InvalidInput(
                "The body is not an NPY array: it does not start with numpy.save's header."
            )
        try:
            check_npy_size(data)
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise InvalidInput(
                    "The NPY body holds Python objects, which are refused (allow_pickle is "
                    "off): send a numeric array."
                ) from exc
            raise InvalidInput(f"The body is not a valid NPY array: {exc}.") from exc
        except (OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
            # numpy reads a version 1 header with tokenize and ast: a broken one raises
            # their errors, not ValueError.
            raise InvalidInput(f"The body is not a valid NPY array: {exc}.") from exc
        if array.ndim not in (1, 2) or array.size == 0:
            raise InvalidInput(
                f"The NPY array has shape {array.shape}; expected a non-empty 2-D array "
                f"(records x features) or a 1-D array (one record)."
            )
        if array.dtype.kind == "c":
            # astype(float64) would drop the imaginary parts with only a warning.
            raise InvalidInput(
                f"The NPY array of {array.dtype} holds complex numbers: send real ones."
            )
        try:
            return Batch(values=array.astype(np.float64, copy=False))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"The NPY array of {array.dtype} is not numeric: {exc}."
            ) from exc


def check_npy_size(data: bytes) -> None:
    """Refuse a header that declares more data than the body holds, before ``np.load``
    allocates it: a 100-byte body may declare petabytes (``MemoryError``, a 500)."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    # Versions 2.0 and 3.0 share the header layout (3.0 only allows UTF-8 names).
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle is off), with its own message.
    declared = math.prod(shape) * dtype.itemsize
    held = len(data) - stream.tell()
    if declared > held:
        raise InvalidInput(
            f"The NPY header declares shape {shape} of {dtype} ({declared} bytes) but "
            f"the body holds {held} bytes of data."
        )
