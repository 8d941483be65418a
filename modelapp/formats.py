"""Data formats, one vocabulary for training and serving: media types and byte readers.

Framework-free (no Django, no DRF, no pandas): ``parsers.py`` reads request bodies with
these pieces by serving's rules, ``training/channels.py`` reads channel files with them by
training's, and the reader raises ``FormatError``, which each side turns into its own
error (``InvalidInput`` -> 400; ``ClientError`` -> a failed job).

Every media type below means the same on both sides (``canonical``), aliases included.
The differences that must stay, and why:

| | serving (a request body) | training (a channel) |
|---|---|---|
| CSV header | only when declared (``text/csv; header=present``): a body is often a single record, which no sniffer can tell from a header | declared (``smserve_header``), else sniffed by ``looks_like_header`` (a first line without numbers above one with numbers) |
| ``application/json`` | one JSON document (``[[...]]``, ``{"instances"}``, ``{"inputs"}``), read as JSON Lines when it is several documents one per line | JSON Lines: a channel is many records |
| a JSON Lines line holding one number | a record of one feature | refused: a line holds a record's features and its label |
| CSV reading | Python's ``csv`` (and an orjson fast path for numeric bodies, ``fastpaths.py``), bodies of at most 100 MB | pandas' ``read_csv``, for files of any size |
| a field that is not a number | kept as sent (``Batch.rows``); the model's schema reads it as a category or refuses it (``predictors/schema.py``) | makes its column categorical, unless the column is mostly numbers: then a mistake (``channels.py``) |
| NPY | read | not a channel format |
| Parquet | one file per body, read in place by pyarrow alone (``parquet.py``): a numeric model's workers never import pandas | one or more files, read by pandas' ``read_parquet`` into the frame training fits on |
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Iterator
from typing import Any

import orjson

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
PARQUET = "application/x-parquet"
# SageMaker's request and response header of custom attributes (``method=`` is ours).
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"

# Every name a client or a training channel may use -> the one smserve speaks of.
ALIASES = {
    "text/csv": CSV,
    "application/csv": CSV,
    "text/plain": CSV,
    "application/json": JSON,
    "application/jsonlines": JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/x-npy": NPY,
    "application/x-parquet": PARQUET,
    "application/parquet": PARQUET,
    "application/vnd.apache.parquet": PARQUET,
}


class FormatError(ValueError):
    """Data that is not what its format says; ``line`` is 1-based where known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def base_type(header: str) -> str:
    """``'Text/CSV; charset=utf-8'`` -> ``'text/csv'``."""
    return header.split(";", 1)[0].strip().lower()


def canonical(media_type: str) -> str | None:
    """The media type smserve knows ``media_type`` (any case, any parameters) as, or
    None; an unknown type is returned as its base type so that a pluggable parser for it
    can still match."""
    media_type = base_type(media_type)
    return ALIASES.get(media_type, media_type or None)


def strip_bom(data: bytes) -> bytes:
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def json_lines(data: bytes) -> list[tuple[int, Any]]:
    """``(line number, decoded JSON value)`` for each non-blank line, in order."""
    items = []
    for number, line in enumerate(strip_bom(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise FormatError(
                f"Line {number} is not valid JSON: {exc}", number
            ) from exc
    return items


def csv_rows(text: str) -> list[list[str]]:
    """Rows of fields; quoted fields keep their commas and newlines. Blank lines at the
    end (a file's, or a batch transform slice's, trailing newlines) are not rows."""
    rows = [row for chunk in csv_chunks(text) for row in chunk]
    while rows and not "".join(rows[-1]).strip():
        rows.pop()
    return rows


# Characters of text split into rows at a time by ``csv_chunks``.
CSV_CHUNK_CHARS = 1 << 13


def csv_chunks(text: str) -> Iterator[list[list[str]]]:
    """``csv_rows`` a chunk of rows at a time, trailing blank lines included: the rows
    of a large body need not all exist at once."""
    if '"' in text:
        reader = csv.reader(io.StringIO(text))
        try:
            while chunk := list(itertools.islice(reader, CSV_CHUNK_CHARS // 16 or 1)):
                yield chunk
        except csv.Error as exc:
            raise FormatError(f"The CSV is malformed: {exc}") from exc
        return
    start = 0
    while start < len(text):
        # Whole lines: a chunk ends after a "\n" (after any "\r" before it).
        end = text.find("\n", start + CSV_CHUNK_CHARS) + 1 or len(text)
        yield [line.split(",") for line in text[start:end].splitlines()]
        start = end


def looks_like_header(head: bytes) -> bool:
    """A first line with no number in it, above a line with numbers: a header."""
    lines = [
        line
        for line in head.decode("utf-8-sig", "replace").splitlines()[:2]
        if line.strip()
    ]
    if not lines:
        return False

    def numbers(line: str) -> int:
        count = 0
        for value in line.split(","):
            try:
                float(value.strip().strip('"'))
            except ValueError:
                continue
            count += 1
        return count

    if numbers(lines[0]):
        return False
    return len(lines) == 1 or numbers(lines[1]) > 0
