"""Request body -> ``Batch``: one parser per Content-Type, chosen by the negotiation class.

A parser only turns bytes into records, by serving's rules (``formats.py`` writes down
where they differ from training's); it does not know the model. Checks that need the
model (feature count, names, NaN support) happen in the predictor.

Memory is bounded by the body: numbers (with gaps and nulls, in every format) go into
one float array a chunk at a time (``numeric_lines``, ``parse_numeric_records``), CSV
text into one object array with each distinct text once (``read_csv``); what must
become a Python object per value may take ``PARSED_MULTIPLE`` times the payload limit,
else it is a 413 before it is made.
"""

from __future__ import annotations

import functools
import io
import math
import re
import tokenize
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
import orjson
from django.utils.http import parse_header_parameters
from rest_framework.parsers import BaseParser

from modelapp import conf, formats

# to_float_rows is re-exported for parsers of other formats (a plug-in's TSV, say).
from modelapp.batch import (  # noqa: F401
    Batch,
    Chunks,
    Declined,
    RecordTable,
    batch_of_rows,
    to_float_rows,
)
from modelapp.exceptions import InvalidInput, PayloadTooLarge

# A body's parsed form may take at most this many times the payload limit (the limit
# of a batch transform's 100 MB when there is none); docs/serving.md says so.
PARSED_MULTIPLE = 20
UNLIMITED_PAYLOAD = 100 * 1024 * 1024
# A value's Python object and its slot in a list or dict, as orjson makes them.
JSON_VALUE_BYTES = 64
JSON_SHAPES = '[[...], ...], {"instances": [...]} or {"inputs": [...]}'


def parsed_budget() -> int:
    """Bytes the Python objects of one parsed body may take (``PARSED_MULTIPLE``)."""
    return PARSED_MULTIPLE * (conf.max_payload_bytes() or UNLIMITED_PAYLOAD)


def too_large(what: str, budget: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The {what} body would take more than {budget // 2**20} MB once parsed "
        f"({PARSED_MULTIPLE} times the payload limit): send fewer records per request, "
        "or numbers where the model takes numbers."
    )


def check_json_budget(data: bytes) -> None:
    """Refuse a JSON body whose Python objects would pass the budget, before orjson
    makes them: about ``JSON_VALUE_BYTES`` for each value (counted by its separators)."""
    budget = parsed_budget()
    values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if values * JSON_VALUE_BYTES > budget:
        raise too_large("JSON", budget)


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
        header = params.get("header", "").lower() == "present"
        general = functools.partial(read_csv_bytes, data, charset, header)
        if charset.lower() in ASCII_CHARSETS and conf.fast_path("numeric_csv"):
            batch = numeric_csv_chunks(data, header, general) or parse_numeric_csv(
                data, header
            )
            if batch is not None:
                return batch
        return general()


def read_csv_bytes(data: bytes, charset: str, header: bool) -> Batch:
    """The general CSV reader (``read_csv``) on the body in ``charset``."""
    try:
        text = data.decode(charset)
    except (LookupError, UnicodeError) as exc:
        # UnicodeError, not only its UnicodeDecodeError: punycode, idna and
        # undefined raise the base class on bytes they cannot read.
        raise InvalidInput(f"The CSV body is not valid {charset}: {exc}.") from exc
    return read_csv(text, header, parsed_budget())


class _CSVTable:
    """The general CSV reader's state: records go straight into one 2-D object array,
    each distinct text kept once, so a large body costs a pointer per field, not a list
    per record and a string per field; the checks of ``read_csv`` are made in one pass."""

    def __init__(self, rows: int, budget: int) -> None:
        self.budget = budget
        self.rows = np.empty((0, 0), dtype=object)
        self.expected = rows  # an estimate: the array grows if it is short
        self.spelt: dict[str, str] = {}
        self.records = 0
        self.width = 0
        self.blank_line: int | None = None
        self.ragged: tuple[int, int] | None = None

    def add(self, rows: list[list[str]]) -> None:
        """Records ``records + 1`` onwards, in order."""
        first = self.records
        self.records += len(rows)
        if self.blank_line is not None or self.ragged is not None:
            return  # an error will answer; the rest is only read for malformed CSV
        widths = set(map(len, rows))
        if not first:
            self.width = len(rows[0])
            self.rows = np.empty((max(self.expected, len(rows)), self.width), object)
        if 1 in widths:
            for number, row in enumerate(rows, first + 1):
                if len(row) == 1 and not row[0].strip():
                    self.blank_line = number
                    return
        if widths != {self.width}:
            for number, row in enumerate(rows, first + 1):
                if len(row) != self.width:
                    self.ragged = (number, len(row))
                    return
        cost = 8 * self.records * self.width + 160 * len(self.spelt)
        if cost > self.budget:
            raise too_large("CSV", self.budget)
        if self.records > len(self.rows):
            grown = np.empty((2 * self.records, self.width), object)
            grown[:first] = self.rows[:first]
            self.rows = grown
        block = self.rows[first : self.records]
        for j, column in enumerate(zip(*rows, strict=True)):
            block[:, j] = list(map(self.spelt.setdefault, column, column))

    def batch(self, columns: list[str] | None) -> Batch:
        if not self.records:
            raise InvalidInput("The CSV body has no records: send one record per line.")
        if self.blank_line is not None:
            raise InvalidInput(
                f"Record {self.blank_line} is a blank line: send one record per line."
            )
        if columns is not None and len(columns) != self.width:
            raise InvalidInput(
                f"The CSV header names {len(columns)} columns but record 1 has "
                f"{self.width}."
            )
        if self.ragged is not None:
            raise InvalidInput(
                "Every record must have the same number of features: record 1 has "
                f"{self.width}, record {self.ragged[0]} has {self.ragged[1]}."
            )
        rows = self.rows[: self.records]
        missing = set()
        for text in self.spelt:
            if not text.strip():
                missing.add(text)
                continue
            try:
                float(text)
            except ValueError:
                # Text: every field as sent, for the model's schema.
                return Batch(rows=rows, columns=columns)
        del self.spelt
        if missing:
            # Blank fields are missing values (numpy reads the rest with float()).
            for j in range(self.width):
                rows[:, j] = [
                    math.nan if text in missing else text for text in rows[:, j]
                ]
        return Batch(values=rows.astype(np.float64), columns=columns)


def read_csv(text: str, header: bool, budget: int) -> Batch:
    """The general CSV reader (``csv_chunks``): numbers into a float array, else the
    fields as sent (``Batch.rows``, a 2-D object array); errors name the record."""
    table = _CSVTable(text.count("\n") + 1, budget)
    columns = None
    # Blank rows at the end are no records: held back until a record follows them.
    held: list[list[str]] = []
    try:
        for chunk in formats.csv_chunks(text):
            if header and columns is None and chunk:
                columns = [name.strip() for name in chunk.pop(0)]
            last = len(chunk)
            while last and not "".join(chunk[last - 1]).strip():
                last -= 1
            if last:
                table.add(held + chunk[:last] if held else chunk[:last])
                held = chunk[last:]
            else:
                held += chunk
    except formats.FormatError as exc:
        raise InvalidInput(
            f"{exc.reason}: send one record per line, fields quoted with double "
            "quotes where they hold commas or line breaks."
        ) from exc
    return table.batch(columns)


ASCII_CHARSETS = {"utf-8", "utf8", "ascii", "us-ascii", "iso-8859-1", "latin-1"}
# Bytes per orjson call: the float objects of one chunk are freed before the next is
# parsed, so their memory is reused warm instead of 6 MB of fresh pages.
CSV_CHUNK_BYTES = 1 << 14
# Closes every line in the JSON text; a body holding this value itself takes the general
# parser (it would be counted as a line end), which reads it correctly.
LINE_END = 7e307
_LINE_END_JSON = b"7e307"
# A quote (a JSON string), t, f and n (true, false, null) would read as numbers or NaN.
FORBIDDEN_BYTES = (b'"', b"t", b"f", b"n")
WHITESPACE = b" \t\n\r\x0b\x0c"
NEWLINE, COMMA = ord("\n"), ord(",")


def parse_numeric_csv(data: bytes, header: bool) -> Batch | None:
    """The common case, fast: unquoted numeric CSV, every field a JSON number or blank.

    ``numeric_lines`` reads the lines; a blank field is a missing value (NaN), as the
    general parser reads it. Anything else (a blank line, a ragged row, ``true``, a
    quote, ``nan``, ``+1``, ``.5``, a letter) makes it decline, and the general parser
    answers, with its own values and error messages. One difference: JSON reads ``-0``
    as the integer 0, so it becomes 0.0 rather than -0.0 (equal under ``==``, so no
    comparison or sum changes).
    """
    lines = numeric_csv_lines(data, header)
    if lines is None:
        return None
    data, begin, stop, columns = lines
    values = numeric_lines(data, stop, blanks=True, start=begin)
    if values is None or (columns is not None and len(columns) != values.shape[1]):
        return None
    return Batch(values=values, columns=columns)


def numeric_csv_chunks(
    data: bytes, header: bool, general: Callable[[], Batch]
) -> Batch | None:
    """``parse_numeric_csv`` for a body larger than a chunk: its ``Chunks``, read
    when their turn comes (``general()`` reads the whole body should one decline);
    None for a body that fits one chunk or that the fast path refuses at once."""
    if len(data) <= chunk_bytes():
        return None
    lines = numeric_csv_lines(data, header)
    if lines is None:
        return None
    data, begin, stop, columns = lines
    return numeric_chunks(data, stop, True, general, columns=columns, start=begin)


def numeric_csv_lines(
    data: bytes, header: bool
) -> tuple[bytes, int, int, list[str] | None] | None:
    """Where a numeric CSV body's records are: ``(data, start, stop, columns)``, the
    records being the lines of ``data[start:stop]`` and ``columns`` the header's
    names; None when it holds what the fast path never reads."""
    columns = None
    begin = 0
    if header:
        newline = data.find(b"\n")
        begin = len(data) if newline < 0 else newline + 1
        first = data[:newline] if newline >= 0 else data
        if not first.isascii() or b'"' in first:
            return None
        columns = [name.strip() for name in first.decode().split(",")]
    # Trailing blank lines end the body; found in place (a 6 MB copy costs page faults).
    stop = len(data)
    while stop > begin and data[stop - 1] in WHITESPACE:
        stop -= 1
    # JSON strings and the literals true/false/null would read as numbers or NaN;
    # brackets, NaN and anything else are refused by orjson or numpy below.
    if stop <= begin or any(data.find(char, begin) >= 0 for char in FORBIDDEN_BYTES):
        return None
    if data.find(b"\r", begin) >= 0:
        data = data[begin:stop].replace(b"\r\n", b"\n")
        begin, stop = 0, len(data)
        if b"\r" in data:
            return None
    return data, begin, stop, columns


def numeric_lines(
    data: bytes,
    stop: int,
    blanks: bool,
    prepare: Prepare | None = None,
    start: int = 0,
) -> np.ndarray | None:
    """``data[start:stop]``: lines of comma-separated JSON numbers (or ``null``) of equal
    width -> a 2-D float array; None when it is anything else. ``blanks``: an empty
    field is a missing value (CSV's rule), else it is no number (JSON's). ``prepare``
    turns a run of whole lines into such lines (JSON Lines' brackets), or declines.

    Each chunk of whole lines becomes one flat JSON array with ``LINE_END`` after every
    line (two ``bytes.replace``); orjson parses it, numpy reads the floats into the rows
    of one array (sized from the first chunk), and the markers must then fill the last
    column: so every line had the same width (a blank line too would be a line of one
    value). A chunk orjson refuses is tried once more with its empty fields as ``null``
    (NaN), when ``blanks``: a body without gaps pays nothing for them. No Python code
    runs per line or per value, and the memory beyond the answer is one chunk's.
    """
    try:
        width = _line_width(data, start, stop, blanks)
        return _read_lines(data, start, stop, width, blanks and width > 1, prepare)
    except Declined:
        return None


# A run of whole lines -> lines of comma-separated numbers (``Declined`` if it cannot).
Prepare = Callable[[bytes], bytes]


def _line_width(data: bytes, start: int, stop: int, blanks: bool) -> int:
    """The fields of the first line; ``Declined`` where the general parser must say
    what is wrong (a blank first or last line)."""
    if stop <= start or data[start] == NEWLINE:
        raise Declined  # a blank line: the general parser says which
    newline = data.find(b"\n", start, stop)
    width = data.count(b",", start, newline if newline >= 0 else stop) + 1
    last = max(start, data.rfind(b"\n", start, stop) + 1)
    # One column: an empty field is a blank line, which the general parser refuses.
    if blanks and width > 1 and not data[last:stop].strip(b", "):
        raise Declined  # a last line of blank fields: not a record to the general parser
    return width


def _read_lines(
    data: bytes,
    start: int,
    stop: int,
    width: int,
    blanks: bool,
    prepare: Prepare | None,
) -> np.ndarray:
    """The lines of ``data[start:stop]`` (``numeric_lines``), or ``Declined``."""
    out = np.empty((0, width))
    line_end = b"," + _LINE_END_JSON + b","
    filled, begin = 0, start
    try:
        while start < stop:
            end = data.find(b"\n", start + CSV_CHUNK_BYTES, stop)
            end = stop if end < 0 else end
            text = data[start:end]
            if prepare is not None:
                text = prepare(text)
            text = text.replace(b"\n", line_end)
            text = b"".join((b"[", text, line_end[:-1], b"]"))
            try:
                items = orjson.loads(text)
            except orjson.JSONDecodeError:
                if not blanks:
                    raise
                # Twice: bytes.replace skips the second pair of ",,,".
                text = text.replace(b",,", b",null,").replace(b",,", b",null,")
                items = orjson.loads(text.replace(b"[,", b"[null,", 1))
            try:
                values = np.fromiter(items, np.float64, len(items))
            except TypeError:
                values = np.array(items, np.float64)  # None (null) -> NaN
            if values.ndim != 1 or len(values) % (width + 1):
                raise Declined
            table = values.reshape(-1, width + 1)
            if (table[:, width] != LINE_END).any() or np.count_nonzero(
                values == LINE_END
            ) != len(table):
                raise Declined
            if end >= stop and not filled:
                return table[:, :width].copy()  # one chunk: the body was small
            if filled + len(table) > len(out):
                out = _grown(
                    out, filled, filled + len(table), end + 1 - begin, stop - begin
                )
            out[filled : filled + len(table)] = table[:, :width]
            filled += len(table)
            start = end + 1
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise Declined from exc
    # An estimate far above the lines there were: give the room back.
    return out[:filled] if filled > len(out) // 2 else out[:filled].copy()


def _grown(out: np.ndarray, filled: int, rows: int, read: int, stop: int) -> np.ndarray:
    """Room for the rows of a body of ``stop`` bytes, estimated from the ``rows`` in
    its first ``read`` bytes (counting its lines first would cost a pass over it)."""
    estimate = rows if read >= stop else int(rows * stop / read * 1.05) + 16
    grown = np.empty((estimate, out.shape[1]))
    grown[:filled] = out[:filled]
    return grown


def chunk_bytes() -> int:
    """Bodies larger than this are read a chunk of this size at a time (``Chunks``)."""
    return int(conf.get("CHUNK_KB")) * 1024


def numeric_chunks(
    data: bytes,
    stop: int,
    blanks: bool,
    general: Callable[[], Batch],
    prepare: Prepare | None = None,
    columns: list[str] | None = None,
    start: int = 0,
) -> Batch | None:
    """``numeric_lines`` for a body larger than a chunk: a ``Batch`` of ``Chunks``,
    each a run of whole lines of about ``chunk_bytes()`` read when its turn comes, or
    ``general()`` for the whole body when one of them is no lines of numbers. None
    for a body that fits one chunk, or whose first or last line the fast path
    refuses (the caller answers as for a small body)."""
    size = chunk_bytes()
    if stop - start <= size:
        return None
    try:
        width = _line_width(data, start, stop, blanks)
    except Declined:
        return None
    if columns is not None and len(columns) != width:
        return None
    blanks = blanks and width > 1

    def blocks() -> Iterator[Batch]:
        begin = start
        while begin < stop:
            end = data.find(b"\n", begin + size, stop)
            end = stop if end < 0 else end
            values = _read_lines(data, begin, end, width, blanks, prepare)
            yield Batch(values=values, columns=columns)
            begin = end + 1

    # Every line is a record, or a chunk declines: the lines are the records.
    records = data.count(b"\n", start, stop) + 1
    return Batch(chunks=Chunks(blocks, general, records))


# A document whose records sit under one key: the key, then the list to the last brace.
_KEYED = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"(?:instances|inputs)"[ \t\n\r]*:')
JSON_WHITESPACE = b" \t\n\r"
# Inside a line of numbers: whitespace the general parser reads (or refuses) itself.
SPACES = (b" ", b"\t", b"\x0b", b"\x0c", b"\r")


def parse_numeric_json(data: bytes) -> Batch | None:
    """``[[...], ...]``, a flat ``[...]``, or either under ``"instances"``/``"inputs"``,
    of numbers and nulls only, on one line: the rows become lines for ``numeric_lines``,
    so no Python object is made per value. None for anything else (the general parser
    answers); orjson reads every number, here as there."""
    found = numeric_json_lines(data)
    if found is None:
        return None
    lines, flat = found
    values = numeric_lines(lines, len(lines), blanks=False)
    if values is None:
        return None
    return Batch(values=values.reshape(-1) if flat else values)


def numeric_json_chunks(data: bytes, general: Callable[[], Batch]) -> Batch | None:
    """``parse_numeric_json`` of rows for a body larger than a chunk: its ``Chunks``
    (``numeric_chunks``); None otherwise."""
    if len(data) <= chunk_bytes():
        return None
    found = numeric_json_lines(data)
    if found is None or found[1]:
        return None  # a flat list is one record, or one a value: the model says which
    return numeric_chunks(found[0], len(found[0]), False, general)


def numeric_json_lines(data: bytes) -> tuple[bytes, bool] | None:
    """A JSON body of numbers as lines for ``numeric_lines``, and whether it was a
    flat list; None when it is no such body."""
    if b'"' in data:
        match = _KEYED.match(data)
        end = data.rfind(b"}")
        if (
            match is None
            or data.count(b'"') != 2
            or data[end + 1 :].strip(JSON_WHITESPACE)
        ):
            return None
        data = data[match.end() : end]
    if b" " in data:
        data = data.replace(b", ", b",")  # json.dumps' separator; no strings here
    data = data.strip(JSON_WHITESPACE)
    if (
        not (data.startswith(b"[") and data.endswith(b"]"))
        or b"\n" in data
        or any(char in data for char in SPACES)
    ):
        return None
    flat = not data.startswith(b"[[")
    if flat:
        lines = data[1:-1].replace(b",", b"\n")  # one value a line
    elif data.endswith(b"]]"):
        lines = data[2:-2].replace(b"],[", b"\n")
    else:
        return None
    del data
    if b"[" in lines or b"]" in lines or lines.endswith(b"\n"):
        return None
    return lines, flat


def parse_numeric_json_lines(data: bytes) -> Batch | None:
    """JSON Lines of numbers, or of arrays of numbers (and nulls), one record a line:
    read by ``numeric_lines``, each run of lines made comma-separated numbers as it is
    read (no copy of the body); None for anything else, as ``parse_numeric_json``."""
    found = numeric_json_lines_runs(data)
    if found is None:
        return None
    values = numeric_lines(data, found[0], False, found[1])
    return None if values is None else Batch(values=values)


def numeric_json_lines_chunks(
    data: bytes, general: Callable[[], Batch]
) -> Batch | None:
    """``parse_numeric_json_lines`` for a body larger than a chunk: its ``Chunks``
    (``numeric_chunks``); None otherwise."""
    if len(data) <= chunk_bytes():
        return None
    found = numeric_json_lines_runs(data)
    if found is None:
        return None
    return numeric_chunks(data, found[0], False, general, found[1])


def numeric_json_lines_runs(data: bytes) -> tuple[int, Prepare] | None:
    """Where JSON Lines of numbers end, and how a run of them becomes lines for
    ``numeric_lines``; None when the body is no such lines."""
    if b'"' in data or b"{" in data:
        return None
    stop = len(data)
    while stop and data[stop - 1] in JSON_WHITESPACE:
        stop -= 1
    arrays = data.startswith(b"[")
    if arrays and data[stop - 1 : stop] != b"]":
        return None
    if not arrays and b"," in data:
        return None  # "1,2" is no JSON value

    def prepare(text: bytes) -> bytes:
        if b"\r" in text:
            # A run ends before a line's "\n": a "\r" left at its end was a "\r\n".
            text = text.replace(b"\r\n", b"\n").removesuffix(b"\r")
        if b" " in text:
            text = text.replace(b", ", b",")
        if any(char in text for char in SPACES):
            raise Declined
        if arrays:
            # Arrays: "[" and "]" close every line, and none is left inside one.
            if not (text.startswith(b"[") and text.endswith(b"]")):
                raise Declined
            text = text[1:-1].replace(b"]\n[", b"\n")
        if b"[" in text or b"]" in text:
            raise Declined
        return text

    return stop, prepare


# Bytes of records parsed per orjson call by ``parse_numeric_records``.
RECORDS_CHUNK_BYTES = 1 << 15


def parse_numeric_records(data: bytes, lines: bool) -> Batch | None:
    """Records as objects with the same keys and numbers or nulls for values, a JSON
    list of them or JSON Lines (``lines``): parsed a chunk of records at a time into a
    ``RecordTable``, so no dict is kept per record. None for anything else.

    A chunk ends at a ``}`` followed by the next record (``,`` then ``{``, or a line
    end); a cut inside a string or a nested value leaves a chunk that is no valid
    JSON list, and the whole body goes to the general parser instead."""
    data = data.strip(JSON_WHITESPACE)
    if lines:
        if not data.startswith(b"{") or b"\n\n" in data or b"\r" in data:
            return None
        ends = re.compile(rb"\}\n")
    else:
        if not data.startswith(b"[{") or not data.endswith(b"}]"):
            return None
        data = data[1:-1]
        ends = re.compile(rb"\}[ \t\n\r]*,")
    keys: list[str] | None = None
    blocks = []
    start = 0
    try:
        while start < len(data):
            found = ends.search(data, start + RECORDS_CHUNK_BYTES)
            end = found.end() if found else len(data) + 1
            chunk = data[start : end - 1]
            if lines:
                count = chunk.count(b"\n") + 1
                chunk = chunk.replace(b"\n", b",")
            records = orjson.loads(b"".join((b"[", chunk, b"]")))
            if lines and len(records) != count:
                return None  # two values on one line: the general parser refuses it
            if keys is None:
                if not records or type(records[0]) is not dict:
                    return None
                keys = list(records[0])
            block = np.empty((len(records), len(keys)))
            for j, key in enumerate(keys):
                column = [record[key] for record in records]
                if str in set(map(type, column)):
                    return None  # text: the schema reads it, from the dicts
                numbers = np.array(column, dtype=np.float64)
                if numbers.shape != (len(records),):
                    return None  # arrays as values: no table cells
                block[:, j] = numbers
            if any(type(r) is not dict or len(r) != len(keys) for r in records):
                return None
            blocks.append(block)
            start = end
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None
    if keys is None or not keys:
        return None
    values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return Batch(records=RecordTable(keys, values))


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
        general = functools.partial(parse_json_general, data)
        return (
            numeric_json_chunks(data, general) or parse_numeric_json(data) or general()
        )


def parse_json_general(data: bytes) -> Batch:
    """A JSON body that is not arrays of numbers on one line (``parse_numeric_json``)."""
    batch = parse_numeric_records(data, lines=False)
    if batch is not None:
        return batch
    check_json_budget(data)
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
    general = functools.partial(parse_json_lines_general, data)
    return (
        numeric_json_lines_chunks(data, general)
        or parse_numeric_json_lines(data)
        or general()
    )


def parse_json_lines_general(data: bytes) -> Batch:
    """JSON Lines that are not numbers or arrays of numbers (``parse_json_lines``)."""
    batch = parse_numeric_records(data, lines=True)
    if batch is not None:
        return batch
    check_json_budget(data)
    try:
        items = formats.json_lines(data)
    except formats.FormatError as exc:
        raise InvalidInput(f"{exc.reason}.") from exc
    records = [item if isinstance(item, (list, dict)) else [item] for _, item in items]
    return batch_from_items(features_arrays(records), "The JSON Lines body")


def features_arrays(records: list[Any]) -> list[Any]:
    """Records that are each ``{KEY: [...]}`` (``SMSERVE['JSONLINES_FEATURES_KEY']``,
    ``features``: Clarify's ``ContentTemplate`` ``{"features":$features}``) -> the
    arrays, positional records. A feature's value is never an array, so a model with a
    feature of that name still gets its objects."""
    key = conf.get("JSONLINES_FEATURES_KEY")
    if key and all(
        type(record) is dict and len(record) == 1 and type(record.get(key)) is list
        for record in records
    ):
        return [record[key] for record in records]
    return records


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
        budget = parsed_budget()
        if array.size * 8 > budget:
            raise too_large("NPY", budget)
        if array.ndim == 2 and len(data) > chunk_bytes():
            return npy_chunks(array)
        try:
            return Batch(values=array.astype(np.float64, copy=False))
        except MemoryError as exc:
            raise too_large("NPY", budget) from exc


def npy_chunks(array: np.ndarray) -> Batch:
    """A large 2-D array a run of rows at a time, each made float64 when its turn
    comes (an array of bytes would take eight times its size at once)."""
    rows = max(1, chunk_bytes() // max(1, array.itemsize * array.shape[1]))

    def blocks() -> Iterator[Batch]:
        for start in range(0, len(array), rows):
            part = array[start : start + rows]
            yield Batch(values=part.astype(np.float64, copy=False))

    def general() -> Batch:
        return Batch(values=array.astype(np.float64, copy=False))

    return Batch(chunks=Chunks(blocks, general, len(array)))


# dtype kinds read as numbers: booleans, signed and unsigned integers, floats, and
# complex numbers (refused after loading, with their own message).
NPY_KINDS = "biufc"


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
    if dtype.kind not in NPY_KINDS:
        # Text, bytes, dates and records are no features; and a zero-size one
        # ('<U0' of any shape) would pass the size check below, then fail to convert.
        raise InvalidInput(
            f"The NPY array of {dtype} is not numeric: send booleans, integers or "
            "floats."
        )
    declared = math.prod(shape) * dtype.itemsize
    held = len(data) - stream.tell()
    if declared > held:
        raise InvalidInput(
            f"The NPY header declares shape {shape} of {dtype} ({declared} bytes) but "
            f"the body holds {held} bytes of data."
        )
