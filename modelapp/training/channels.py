"""Channel data -> a feature matrix and a target: CSV, Parquet, JSON Lines, gzipped or not.

File and FastFile channels are directories read recursively, in sorted order; a Pipe channel
is the FIFO ``<channel>_0``, opened once and read as a stream. The format comes from the
channel's ``ContentType`` when it has one, else from the bytes (gzip and Parquet by their
magic numbers, JSON Lines by a leading ``{`` or ``[``, CSV otherwise).
"""

from __future__ import annotations

import gzip
import io
import logging
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd

from modelapp import formats
from modelapp.metadata import (
    CATEGORICAL,
    MAX_CATEGORIES_KEPT,
    NUMERIC,
    Feature,
    category_value,
)
from modelapp.paths import SageMakerPaths
from modelapp.text import brief
from modelapp.training.environment import (
    CATEGORICAL_COLUMNS,
    HEADER,
    TARGET_COLUMN,
    ChannelConfig,
)
from modelapp.training.errors import ClientError

logger = logging.getLogger(__name__)

CSV, PARQUET, JSONLINES = formats.CSV, formats.PARQUET, formats.JSONLINES
# The formats a channel may be; application/json means JSON Lines here (formats.py).
CHANNEL_FORMATS = {
    CSV: CSV,
    PARQUET: PARQUET,
    JSONLINES: JSONLINES,
    formats.JSON: JSONLINES,
}
GZIP_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PAR1"
SNIFF_BYTES = 64 * 1024
# Characters of a data value quoted in a failure reason, which becomes the job's
# FailureReason (readable with DescribeTrainingJob): enough to find it by its row.
QUOTED = 40


@dataclass
class Part:
    """One file's (or one stream's) rows, as read."""

    source: str
    frame: pd.DataFrame
    named: bool  # the columns are names from a header, Parquet schema or JSON objects


@dataclass
class Dataset:
    """A channel, ready to fit or score: features, target and where they came from."""

    channel: str
    X: pd.DataFrame | np.ndarray
    # None: the job has no label column (``smserve_target_column=none``).
    y: np.ndarray | None
    feature_names: list[str] | None
    target_name: str | int | None
    sources: list[str] = field(default_factory=list)
    # One per feature column, in order: kind, categories, share missing, typical value.
    features: list[Feature] = field(default_factory=list)

    @property
    def has_missing(self) -> bool:
        return any(f.missing for f in self.features)

    @property
    def rows(self) -> int:
        return len(self.X)

    @property
    def n_features(self) -> int:
        return self.X.shape[1]


def load_channel(
    config: ChannelConfig,
    paths: SageMakerPaths,
    *,
    target_column: int | str | None = 0,
    header: str = "auto",
    numeric_target: bool = False,
    categorical_columns: list[int | str] | None = None,
    schema: list[Feature] | None = None,
) -> Dataset:
    """Read every record of a channel; ``ClientError`` says what is wrong with the data.

    A feature column is numeric when its values are numbers (blank: missing), else
    categorical: text, Parquet ``category`` and boolean columns, and the columns of
    ``categorical_columns``. ``schema`` (the train channel's features) imposes the kinds
    on a validation or test channel.
    """
    if config.record_wrapper and config.record_wrapper.lower() not in {"none", ""}:
        raise ClientError(
            f"Channel {config.name!r} uses RecordWrapperType {config.record_wrapper}; "
            "smserve reads unwrapped CSV, Parquet or JSON Lines: set it to None."
        )
    media_type = config.media_type
    fmt = (
        CHANNEL_FORMATS.get(formats.canonical(media_type) or "") if media_type else None
    )
    if media_type is not None and fmt is None:
        known = sorted(a for a, f in formats.ALIASES.items() if f in CHANNEL_FORMATS)
        raise ClientError(
            f"Channel {config.name!r} has ContentType {config.content_type!r}; smserve "
            f"reads {', '.join(known)}."
        )
    source = config.source(paths)
    parts = [
        read_stream(stream, name, fmt, header)
        for name, stream in _open_sources(config, source)
    ]
    parts = [p for p in parts if len(p.frame)]
    if not parts:
        raise ClientError(
            f"Channel {config.name!r} has no records: {source} holds no data rows."
        )
    frame, named = _combine(config.name, parts)
    dataset = _split(
        config.name,
        frame,
        named,
        parts,
        target_column,
        numeric_target,
        categorical_columns or [],
        schema,
    )
    logger.info(
        "Channel %s: %d rows, %d features%s, from %d source(s): %s",
        config.name,
        dataset.rows,
        dataset.n_features,
        " (named)" if dataset.feature_names else "",
        len(parts),
        ", ".join(p.source for p in parts),
    )
    return dataset


# --- sources -------------------------------------------------------------------------------
def _open_sources(
    config: ChannelConfig, source: Path
) -> Iterator[tuple[str, IO[bytes]]]:
    if config.input_mode == "Pipe" and config.override is None:
        if not source.exists():
            raise ClientError(
                f"Channel {config.name!r} is in Pipe mode but its FIFO {source} does "
                "not exist."
            )
        # A FIFO can be opened once: everything is read from this one stream.
        logger.info("Channel %s: reading the FIFO %s.", config.name, source)
        with open(source, "rb") as stream:
            yield source.name, stream
        return
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = data_files(source)
        if not files:
            raise ClientError(
                f"Channel {config.name!r} is empty: {source} holds no data files."
            )
    else:
        raise ClientError(
            f"Channel {config.name!r} has no data: {source} does not exist."
        )
    base = source if source.is_dir() else source.parent
    for path in files:
        with open(path, "rb") as stream:
            yield str(path.relative_to(base)), stream


def data_files(directory: Path) -> list[Path]:
    """Every regular file below ``directory``, sorted; hidden files (``.crc``) and markers
    such as Spark's ``_SUCCESS`` are not data."""
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).parts
        if any(part.startswith((".", "_")) for part in relative):
            continue
        if path.is_file() and stat.S_ISREG(path.stat().st_mode):
            files.append(path)
    return files


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read for sniffing."""

    def __init__(self, head: bytes, rest: IO[bytes] | gzip.GzipFile) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _sniff(stream: IO[bytes] | gzip.GzipFile) -> tuple[bytes, IO[bytes]]:
    head = stream.read(SNIFF_BYTES)
    return head, io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 20)


# --- formats -------------------------------------------------------------------------------
def read_stream(stream: IO[bytes], name: str, fmt: str | None, header: str) -> Part:
    """One file or stream as a ``Part``; gzip is recognised by its magic number."""
    try:
        head, stream = _sniff(stream)
        if head.startswith(GZIP_MAGIC):
            head, stream = _sniff(gzip.GzipFile(fileobj=stream, mode="rb"))
        if fmt is None:
            fmt = _guess_format(head)
        if fmt == PARQUET:
            return _read_parquet(stream, name, head)
        if fmt == JSONLINES:
            return _read_jsonlines(stream, name)
        return _read_csv(stream, name, head, header)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ClientError(f"{name} is not a valid gzip file: {exc}") from exc


def _guess_format(head: bytes) -> str:
    if head.startswith(PARQUET_MAGIC):
        return PARQUET
    if head.lstrip().startswith((b"{", b"[")):
        return JSONLINES
    return CSV


def _read_parquet(stream: IO[bytes], name: str, head: bytes) -> Part:
    import pyarrow

    if not head.startswith(PARQUET_MAGIC):
        raise ClientError(
            f"{name} is not a Parquet file (it does not start with PAR1); check the "
            "channel's ContentType."
        )
    try:
        frame = pd.read_parquet(io.BytesIO(stream.read()))
    except (pyarrow.ArrowException, ValueError) as exc:
        raise ClientError(f"{name} is not a readable Parquet file: {exc}") from exc
    frame.columns = [str(c) for c in frame.columns]
    return Part(name, frame, named=True)


def _read_jsonlines(stream: IO[bytes], name: str) -> Part:
    try:
        items = formats.json_lines(stream.read())
    except formats.FormatError as exc:
        raise ClientError(
            f"{name}, line {exc.line}, is not valid JSON: {exc.__cause__}. JSON Lines "
            "data has one JSON array or object per line."
        ) from exc
    rows: list[Any] = []
    kind = None
    for number, record in items:
        this = type(record)
        if this not in (list, dict) or (kind is not None and this is not kind):
            raise ClientError(
                f"{name}, line {number}: every line must be a JSON "
                f"{'array' if kind is list else 'object' if kind is dict else 'array or object'}"
                f", got {orjson.dumps(record).decode()[:60]!r}."
            )
        kind = this
        rows.append(record)
    if kind is dict:
        frame = pd.DataFrame.from_records(rows)
        frame.columns = [str(c) for c in frame.columns]
        return Part(name, frame, named=True)
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise ClientError(
            f"{name}: the JSON arrays have different lengths ({sorted(widths)}); every "
            "record needs the same number of columns."
        )
    return Part(name, pd.DataFrame(rows), named=False)


def _read_csv(stream: IO[bytes], name: str, head: bytes, header: str) -> Part:
    has_header = header == "present" or (
        header == "auto" and formats.looks_like_header(head)
    )
    try:
        frame = pd.read_csv(
            stream,
            header=0 if has_header else None,
            skip_blank_lines=True,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        return Part(name, pd.DataFrame(), named=has_header)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ClientError(f"{name} is not readable as CSV: {exc}") from exc
    if has_header:
        frame.columns = [str(c).strip() for c in frame.columns]
    return Part(name, frame, named=has_header)


# --- one table -----------------------------------------------------------------------------
def _combine(channel: str, parts: list[Part]) -> tuple[pd.DataFrame, bool]:
    first = parts[0]
    for part in parts[1:]:
        if part.named != first.named:
            raise ClientError(
                f"Channel {channel!r} mixes files with and without column names "
                f"({first.source}, {part.source}); give every file a header or none."
            )
        width, expected = part.frame.shape[1], first.frame.shape[1]
        if width != expected:
            raise ClientError(
                f"Channel {channel!r}: {part.source} has {width} columns but "
                f"{first.source} has {expected}; every file needs the same columns."
            )
        if part.named and list(part.frame.columns) != list(first.frame.columns):
            if sorted(part.frame.columns) != sorted(first.frame.columns):
                raise ClientError(
                    f"Channel {channel!r}: {part.source} has the columns "
                    f"{', '.join(part.frame.columns)} but {first.source} has "
                    f"{', '.join(first.frame.columns)}."
                )
            part.frame = part.frame[list(first.frame.columns)]
    _same_types(channel, parts)
    if len(parts) == 1:
        return first.frame.reset_index(drop=True), first.named
    return pd.concat([p.frame for p in parts], ignore_index=True), first.named


def _same_types(channel: str, parts: list[Part]) -> None:
    """A column holding numbers in one file and text in another is a mistake in one of
    them: name both files."""
    numbers: dict[Any, str] = {}
    text: dict[Any, tuple[str, Any]] = {}
    for part in parts:
        for position, column in enumerate(part.frame.columns):
            values = part.frame[column]
            key = column if part.named else position
            if _is_number_dtype(values):
                if values.notna().any():
                    numbers.setdefault(key, part.source)
            else:
                odd = _not_numbers(values)
                if odd.any():
                    text.setdefault(key, (part.source, values[odd].iloc[0]))
    for key in numbers.keys() & text.keys():
        source, value = text[key]
        raise ClientError(
            f"Channel {channel!r}: {_describe(key, parts[0].named)} holds numbers in "
            f"{numbers[key]} but text in {source} ({brief(value, QUOTED)}); every file must give a "
            "column one type."
        )


def _is_number_dtype(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
        values
    )


def _not_numbers(values: pd.Series) -> pd.Series:
    """Where a non-numeric column holds a present value that is not a number."""
    converted = pd.to_numeric(values.astype(object), errors="coerce")
    return values.notna() & converted.isna()


def _split(
    channel: str,
    frame: pd.DataFrame,
    named: bool,
    parts: list[Part],
    target_column: int | str | None,
    numeric_target: bool,
    categorical_columns: list[int | str],
    schema: list[Feature] | None,
) -> Dataset:
    columns = list(frame.columns)
    target: Any = None
    if target_column is not None and len(columns) < 2:
        raise ClientError(
            f"Channel {channel!r} has {len(columns)} column; it needs the target and at "
            "least one feature."
        )
    if target_column is None:
        pass  # every column is a feature
    elif isinstance(target_column, int):
        if not -len(columns) <= target_column < len(columns):
            raise ClientError(
                f"Hyperparameter {TARGET_COLUMN} is {target_column}, but channel "
                f"{channel!r} has {len(columns)} columns (0..{len(columns) - 1})."
            )
        target = columns[target_column]
    elif not named:
        raise ClientError(
            f"Hyperparameter {TARGET_COLUMN} names the column {target_column!r}, but "
            f"channel {channel!r} has no header; give the column's index (0 is the first) "
            f"or add a header (and set {HEADER}=present if it is not detected)."
        )
    elif target_column not in columns:
        raise ClientError(
            f"Hyperparameter {TARGET_COLUMN} names the column {target_column!r}, which "
            f"channel {channel!r} does not have; its columns are {', '.join(columns)}."
        )
    else:
        target = target_column
    features = frame.drop(columns=[target]) if target is not None else frame
    declared = set(categorical_columns)
    unknown = sorted(map(str, declared - set(columns)))
    if unknown:
        raise ClientError(
            f"Hyperparameter {CATEGORICAL_COLUMNS} names {', '.join(unknown)}, which "
            f"channel {channel!r} does not have; its columns are "
            f"{', '.join(map(str, columns))}."
        )
    converted, described = {}, []
    for position, column in enumerate(features.columns):
        values = features[column]
        if schema is not None and position < len(schema):
            kind = schema[position].kind
        else:
            kind = _kind(channel, values, column, named, parts, column in declared)
        if kind == CATEGORICAL:
            converted[column] = _categorical(values)
        else:
            converted[column] = _numeric(channel, values, column, named, parts)
        described.append(_feature(column if named else None, kind, converted[column]))
    X = pd.DataFrame(converted, index=features.index)
    y = (
        _target(channel, frame[target], target, numeric_target, parts)
        if target is not None
        else None
    )
    sources = [p.source for p in parts]
    if named:
        names = [str(c) for c in X.columns]
        X.columns = names
        return Dataset(channel, X, y, names, target, sources, described)
    if any(f.kind == CATEGORICAL for f in described):
        # Text columns: a table whose columns are the features' positions.
        X.columns = range(X.shape[1])
        return Dataset(channel, X, y, None, target, sources, described)
    X = X.to_numpy(dtype=np.float64)
    return Dataset(channel, X, y, None, target, sources, described)


def _locate(row: int, parts: list[Part]) -> str:
    for part in parts:
        if row < len(part.frame):
            return f"{part.source}, record {row + 1}"
        row -= len(part.frame)
    return f"record {row + 1}"


def _describe(column: Any, named: bool) -> str:
    return f"column {column!r}" if named else f"column {int(column)} (0 is the first)"


def _kind(
    channel: str,
    values: pd.Series,
    column: Any,
    named: bool,
    parts: list[Part],
    declared: bool,
) -> str:
    """Numeric or categorical, by the values (``load_channel`` states the rule)."""
    if declared or isinstance(values.dtype, pd.CategoricalDtype):
        return CATEGORICAL
    if pd.api.types.is_bool_dtype(values):
        return CATEGORICAL
    if pd.api.types.is_datetime64_any_dtype(
        values
    ) or pd.api.types.is_timedelta64_dtype(values):
        raise ClientError(
            f"Channel {channel!r}: {_describe(column, named)} holds dates or times "
            f"({values.dtype}); give them as numbers (e.g. days since an epoch) or text."
        )
    if _is_number_dtype(values):
        return NUMERIC
    odd = _not_numbers(values)
    present = int(values.notna().sum())
    if not odd.any():
        return NUMERIC
    if present and odd.sum() * 2 < present:
        # Mostly numbers: the text is more likely a mistake than a category.
        row = int(np.flatnonzero(odd.to_numpy())[0])
        raise ClientError(
            f"Channel {channel!r} has non-numeric data: {_describe(column, named)} holds "
            f"{brief(values.iloc[row], QUOTED)} ({_locate(row, parts)}). Most of its values are "
            "numbers: fix the value, or list the column in "
            f"{CATEGORICAL_COLUMNS} if it holds categories; and check that "
            f"{TARGET_COLUMN} names the label column."
        )
    return CATEGORICAL


def _categorical(values: pd.Series) -> pd.Series:
    """Each category as the text serving will see (``metadata.category_value``)."""
    return pd.Series(
        [category_value(v) for v in values.astype(object)],
        index=values.index,
        dtype=object,
    )


def _feature(name: Any, kind: str, values: pd.Series) -> Feature:
    missing = values.isna()
    feature = Feature(
        name=None if name is None else str(name),
        kind=kind,
        missing=float(missing.mean()) if len(values) else 0.0,
    )
    if kind == CATEGORICAL:
        counts = values[~missing].value_counts(sort=False)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        feature.categories = [value for value, _ in ordered[:MAX_CATEGORIES_KEPT]]
        feature.n_categories = len(ordered)
    elif not missing.all():
        feature.typical = float(values.median())
    return feature


def _numeric(
    channel: str, values: pd.Series, column: Any, named: bool, parts: list[Part]
) -> pd.Series:
    converted = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & converted.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ClientError(
            f"Channel {channel!r} has non-numeric data: {_describe(column, named)} holds "
            f"{brief(values.iloc[row], QUOTED)} ({_locate(row, parts)}), but it is numeric in the "
            "train channel."
        )
    return converted.astype(np.float64)


def _target(
    channel: str,
    values: pd.Series,
    column: Any,
    numeric_target: bool,
    parts: list[Part],
) -> np.ndarray:
    missing = values.isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise ClientError(
            f"Channel {channel!r} has a record without a target value "
            f"({_locate(row, parts)}, target column {column!r})."
        )
    converted = pd.to_numeric(values, errors="coerce")
    if converted.notna().all():
        as_float = converted.to_numpy(dtype=np.float64)
        if not numeric_target and np.all(np.mod(as_float, 1) == 0):
            return as_float.astype(np.int64)  # labels 0, 1, 2: not 0.0, 1.0, 2.0
        return as_float
    if numeric_target:
        row = int(np.flatnonzero(converted.isna().to_numpy())[0])
        raise ClientError(
            f"Channel {channel!r} has non-numeric data: the target column {column!r} "
            f"holds {brief(values.iloc[row], QUOTED)} ({_locate(row, parts)}), but a regressor needs "
            "numbers."
        )
    return np.asarray(values.astype(str).str.strip().to_numpy(), dtype=object)
