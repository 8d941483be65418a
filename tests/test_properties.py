"""Properties (hypothesis) of the serving formats, in-process: every parser turns any
bytes under any Content-Type into a ``Batch`` or an ``InvalidInput``, never another
exception; valid batches round-trip through every renderer; the fast numeric CSV path
agrees with the general parser; the Accept and custom-attributes parsers take any
header text. Seeded (``derandomize``) so a run is the same everywhere."""

from __future__ import annotations

import encodings.aliases
import io
import json
from contextlib import contextmanager

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from modelapp import formats, parsers
from modelapp.batch import Batch, RecordTable
from modelapp.exceptions import InvalidInput, NotAcceptable, UnsupportedMediaType
from modelapp.formats import ALIASES
from modelapp.negotiation import SageMakerContentNegotiation, parse_accept
from modelapp.parquet import ParquetParser, ParquetRenderer
from modelapp.parsers import CSVParser, JSONLinesParser, JSONParser, NPYParser
from modelapp.renderers import (
    CSVRenderer,
    JSONLinesRenderer,
    JSONRenderer,
    NPYRenderer,
)
from modelapp.views import parse_custom_attributes

# A RuntimeWarning is a failure: numpy's ComplexWarning (one) once meant data silently
# lost. (DeprecationWarnings, e.g. unicode_escape's, are Python's business.)
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

PARSERS = [CSVParser, JSONParser, JSONLinesParser, NPYParser, ParquetParser]
RENDERERS = [JSONRenderer, CSVRenderer, JSONLinesRenderer, NPYRenderer, ParquetRenderer]


def seeded(examples: int):
    """Deterministic, no deadline (a loaded CI machine is slow), no example database."""
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- Content-Type headers: any media type, any parameters --------------------------

CHARSETS = [
    "utf-8",
    "UTF-8",
    "utf8",
    "ascii",
    "latin-1",
    "iso-8859-1",
    "cp1252",
    "utf-16",
    "utf-32",
    "utf-8-sig",
    "idna",
    "punycode",
    "unicode_escape",
    "raw_unicode_escape",
    "base64",
    "rot13",
    "zlib",
    "hex",
    "undefined",
    "no-such-charset",
    "",
]
header_text = st.text(
    st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=20
)
param_values = st.one_of(
    st.sampled_from(CHARSETS),
    st.sampled_from(["present", "absent", "PRESENT"]),
    header_text,
)
params = st.lists(
    st.tuples(
        st.sampled_from(["charset", "header", "q", "x"]) | header_text, param_values
    ),
    max_size=4,
)
base_types = st.sampled_from([*ALIASES, "application/octet-stream", ""]) | header_text


@st.composite
def content_types(draw) -> str:
    base = draw(base_types)
    quoted = draw(st.booleans())
    parts = [
        f'{key}="{value}"' if quoted else f"{key}={value}"
        for key, value in draw(params)
    ]
    return "; ".join([base, *parts])


# --- Bodies: random bytes and near-misses of every format --------------------------

csv_text = st.text(st.sampled_from('0123456789.,-+eE\n\r" \tnaifNA\x00é'), max_size=80)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def json_dumps(value) -> bytes:
    # The standard library's: orjson refuses integers beyond 64 bits, a body need not.
    return json.dumps(value).encode()


@st.composite
def npy_bytes(draw) -> bytes:
    array = draw(
        hnp.arrays(
            st.sampled_from(
                ["f8", "i4", "u1", "?", "c16", "U3", "S2", "m8[s]", "M8[D]"]
            ),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
        )
    )
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    cut = draw(st.integers(0, len(data)))
    noise = draw(st.binary(max_size=8))
    return draw(st.sampled_from([data, data[:cut], data[:cut] + noise + data[cut:]]))


@st.composite
def npy_headers(draw) -> bytes:
    """A valid NPY header declaring any shape, over a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": draw(st.sampled_from(["<f8", "<i4", "|u1", "|b1", "<U4", "|O"])),
            "fortran_order": draw(st.booleans()),
            "shape": tuple(draw(st.lists(st.integers(0, 2**40), max_size=3))),
        },
    )
    return header.getvalue() + draw(st.binary(max_size=32))


bodies = st.one_of(
    st.binary(max_size=200),
    csv_text.map(lambda text: text.encode("utf-8")),
    csv_text.map(lambda text: text.encode("latin-1", "replace")),
    json_values.map(json_dumps),
    st.lists(json_values.map(json_dumps), max_size=4).map(b"\n".join),
    npy_bytes(),
    npy_headers(),
)


@pytest.mark.parametrize("parser_class", PARSERS, ids=lambda p: p.__name__)
@seeded(300)
@given(data=bodies, content_type=content_types())
def test_any_body_is_a_batch_or_invalid_input(parser_class, data, content_type):
    """Any bytes under any Content-Type: a ``Batch`` or an ``InvalidInput``, nothing else."""
    try:
        batch = parser_class().parse(io.BytesIO(data), content_type)
    except InvalidInput as exc:
        batch = str(exc.detail)
    if isinstance(batch, str):
        assert batch, "an InvalidInput says what was wrong"
        return
    assert isinstance(batch, Batch)
    kinds = [batch.values, batch.records, batch.rows]
    assert sum(kind is not None for kind in kinds) == 1
    if batch.rows is not None:
        # Fields as sent, for a table model: numbers, text or missing, nothing nested.
        assert all(
            value is None or isinstance(value, (str, int, float))
            for row in batch.rows
            for value in row
        )
    if batch.values is not None:
        assert batch.values.dtype == np.float64
        assert batch.values.ndim in (1, 2)
        assert len(batch) >= 1


# Every codec Python has, by its canonical name: some raise UnicodeError (not its
# subclass UnicodeDecodeError) on bad bytes, some are not text encodings at all.
CODECS = sorted(
    set(encodings.aliases.aliases.values())
    | {"punycode", "undefined", "idna", "unicode_escape", "raw_unicode_escape"}
)


@seeded(200)
@given(data=bodies, charset=st.sampled_from(CODECS))
def test_csv_under_any_codec_is_a_batch_or_invalid_input(data, charset):
    """``text/csv; charset=<any codec Python knows>``: a batch or an ``InvalidInput``."""
    try:
        batch = CSVParser().parse(io.BytesIO(data), f"text/csv; charset={charset}")
    except InvalidInput:
        return
    assert batch.rows is not None or batch.values.ndim == 2


@seeded(300)
@given(content_type=content_types())
def test_any_content_type_picks_a_parser_or_is_unsupported(content_type):
    """``select_parser``: one of the parsers, or a 415 naming the supported types."""
    parsers_ = [cls() for cls in PARSERS]
    django_request = APIRequestFactory().generic(
        "POST", "/invocations", b"1\n", content_type=content_type
    )
    try:
        parser = SageMakerContentNegotiation().select_parser(
            Request(django_request), parsers_
        )
    except UnsupportedMediaType:
        return
    assert parser in parsers_


# --- Renderers: any predictions render; valid batches round-trip -------------------

floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
matrices = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6),
    elements=floats,
)


def read_back(renderer_class, body: bytes) -> np.ndarray:
    """The renderer's body parsed again by the parser of the same format."""
    if renderer_class is JSONRenderer:
        # The answer's key is "predictions"; a request's is "instances".
        predictions = orjson.loads(body)["predictions"]
        body = orjson.dumps({"instances": predictions})
    parser = {
        JSONRenderer: JSONParser,
        CSVRenderer: CSVParser,
        JSONLinesRenderer: JSONLinesParser,
        NPYRenderer: NPYParser,
        ParquetRenderer: ParquetParser,
    }[renderer_class]
    return parser().parse(io.BytesIO(body), parser.media_type).values


@pytest.mark.parametrize("renderer_class", RENDERERS, ids=lambda r: r.__name__)
@seeded(150)
@given(values=matrices)
def test_valid_batches_round_trip(renderer_class, values):
    """A batch of finite floats, rendered and parsed again, has the same values (a flat
    list comes back as one value per record where the format has no flat form)."""
    batch = Batch(values=values)
    back = read_back(renderer_class, renderer_class().render_predictions(batch.values))
    if values.ndim == 1 and back.ndim == 2:
        back = back.ravel()
    assert back.shape == values.shape
    assert np.array_equal(back, values)


predictions = st.one_of(
    hnp.arrays(
        st.sampled_from(["f8", "f4", "i8", "u1", "?"]),
        hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5),
    ),
    hnp.arrays(
        "U5",
        hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5),
        # numpy drops trailing NULs from its strings.
        elements=st.text(st.characters(exclude_characters="\x00"), max_size=5),
    ),
    # Labels of a classifier trained on mixed targets; integers within 64 bits (a
    # prediction is a model's output, not a caller's input).
    st.lists(st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1), max_size=5).map(
        lambda items: np.array(items, dtype=object)
    ),
)


@pytest.mark.parametrize("renderer_class", RENDERERS, ids=lambda r: r.__name__)
@seeded(150)
@given(array=predictions, detail=st.text(max_size=40))
def test_any_predictions_and_errors_render(renderer_class, array, detail):
    """Labels, scores, NaN, infinity or text: every renderer answers bytes, and an error
    body in JSON formats is valid JSON that keeps the detail."""
    renderer = renderer_class()
    assert isinstance(renderer.render_predictions(array), bytes)
    body = renderer.render_error({"detail": detail, "code": "invalid_input"})
    assert isinstance(body, bytes)
    if renderer_class is CSVRenderer:
        assert body.decode() == detail + "\n"
    else:
        assert orjson.loads(body)["detail"] == detail


# --- The fast numeric CSV path agrees with the general parser ----------------------


@contextmanager
def general_parser_only():
    saved = parsers.parse_numeric_csv
    parsers.parse_numeric_csv = lambda data, header: None
    try:
        yield
    finally:
        parsers.parse_numeric_csv = saved


def answer(data: bytes, params: dict[str, str]) -> tuple:
    try:
        batch = CSVParser().parse_bytes(data, params)
    except InvalidInput as exc:
        return ("error", str(exc.detail))
    if batch.values is None:
        # Text fields: the general parser's rows, for a table model.
        return ("rows", np.asarray(batch.rows).tolist(), batch.columns)
    # Values compared with ==: the fast path reads "-0" as 0.0 (its docstring).
    return ("ok", batch.values.shape, batch.values, batch.columns)


def same(fast: tuple, general: tuple) -> bool:
    if fast[0] != general[0] or fast[0] != "ok":
        return fast == general
    return (
        fast[1] == general[1]
        and np.array_equal(fast[2], general[2], equal_nan=True)
        and fast[3] == general[3]
    )


@seeded(200)
@given(
    matrix=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(width=64),
    ),
    header=st.booleans(),
    crlf=st.booleans(),
)
def test_fast_csv_equals_the_general_parser_for_any_float_matrix(matrix, header, crlf):
    """For any float matrix (NaN and infinity included) written as CSV, with or without
    a header and CRLF line ends, the fast path's answer is the general parser's."""
    lines = [",".join(map(repr, row)) for row in matrix.tolist()]
    if header:
        lines.insert(0, ",".join(f"f{i}" for i in range(matrix.shape[1])))
    data = ("\r\n" if crlf else "\n").join(lines).encode() + b"\n"
    params = {"header": "present"} if header else {}
    fast = answer(data, params)
    with general_parser_only():
        general = answer(data, params)
    assert same(fast, general)
    if fast[0] == "ok":
        values = matrix
        assert np.array_equal(fast[2], values, equal_nan=True)


@seeded(200)
@given(
    matrix=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.sampled_from([0.5, -3.0, 1e300, np.nan]) | st.floats(width=64),
    ),
    header=st.booleans(),
)
def test_fast_csv_with_blank_fields_equals_the_general_parser(matrix, header):
    """Missing values written as empty fields: the fast path reads them as NaN exactly
    where the general parser does, or declines (a line of nothing but blank fields)."""
    lines = [
        ",".join("" if np.isnan(value) else repr(value) for value in row)
        for row in matrix.tolist()
    ]
    if header:
        lines.insert(0, ",".join(f"f{i}" for i in range(matrix.shape[1])))
    data = "\n".join(lines).encode() + b"\n"
    params = {"header": "present"} if header else {}
    fast = answer(data, params)
    with general_parser_only():
        general = answer(data, params)
    assert same(fast, general)


@seeded(300)
@given(data=csv_text.map(str.encode), header=st.booleans())
def test_fast_csv_equals_the_general_parser_for_near_numeric_text(data, header):
    """Numeric-looking text of every kind: the fast path answers as the general parser,
    or declines."""
    params = {"header": "present"} if header else {}
    fast = answer(data, params)
    with general_parser_only():
        general = answer(data, params)
    assert same(fast, general)


@seeded(300)
@given(
    data=st.text(
        st.sampled_from('0123456789.,-+eE\n\n\r" \tnaA\x1c\x0b'), max_size=200
    ),
    header=st.booleans(),
)
def test_general_csv_reads_the_same_in_chunks_of_any_size(data, header):
    """The general CSV reader takes a body a few rows at a time: cut into chunks of
    five characters, its answer (values, fields, or the first error) is the same."""
    params = {"header": "present"} if header else {}
    with general_parser_only():
        whole = answer(data.encode(), params)
        saved = formats.CSV_CHUNK_CHARS
        formats.CSV_CHUNK_CHARS = 5
        try:
            chunked = answer(data.encode(), params)
        finally:
            formats.CSV_CHUNK_CHARS = saved
    assert same(chunked, whole)


# --- The numeric JSON paths agree with the general parser ---------------------------

json_numbers = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
)


@contextmanager
def general_json_only():
    saved = (
        parsers.parse_numeric_json,
        parsers.parse_numeric_json_lines,
        parsers.parse_numeric_records,
    )
    parsers.parse_numeric_json = parsers.parse_numeric_json_lines = lambda data: None
    parsers.parse_numeric_records = lambda data, lines: None
    try:
        yield
    finally:
        (
            parsers.parse_numeric_json,
            parsers.parse_numeric_json_lines,
            parsers.parse_numeric_records,
        ) = saved


def json_answer(parser_class, data: bytes) -> tuple:
    try:
        batch = parser_class().parse_bytes(data, {})
    except InvalidInput as exc:
        return ("error", str(exc.detail))
    if batch.records is not None:
        return ("records", *records_form(batch.records))
    if batch.values is None:
        return ("other", repr(batch))
    # repr: NaN equals NaN as text.
    return ("ok", repr(batch.values.tolist()), batch.flat)


def records_form(records) -> tuple:
    """Records as their keys and values in key order, however the parser held them."""
    if isinstance(records, RecordTable):
        keys = sorted(records.keys)
        return keys, repr(records.in_order(keys).tolist())
    keys = sorted(records[0])
    try:
        values = np.array([[r[k] for k in keys] for r in records], dtype=np.float64)
    except (KeyError, ValueError, TypeError):
        return keys, repr(records)
    return keys, repr(values.tolist())


@seeded(300)
@given(
    items=st.lists(
        st.lists(json_numbers, max_size=4)
        | json_numbers
        | st.dictionaries(st.sampled_from("abc"), json_numbers, max_size=3),
        max_size=5,
    ),
    wrap=st.sampled_from(["", "instances", "inputs", "lines", "lines crlf"]),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    parser_class=st.sampled_from([JSONParser, JSONLinesParser]),
)
def test_numeric_json_equals_the_general_parser(items, wrap, separators, parser_class):
    """Lists of numbers, nulls and booleans, or records of them, as one document (under
    "instances" or "inputs" too) or as JSON Lines: the numeric paths answer as the
    general parser."""
    if wrap.startswith("lines"):
        end = "\r\n" if "crlf" in wrap else "\n"
        text = "".join(json.dumps(item, separators=separators) + end for item in items)
    else:
        text = json.dumps({wrap: items} if wrap else items, separators=separators)
    data = text.encode()
    fast = json_answer(parser_class, data)
    with general_json_only():
        general = json_answer(parser_class, data)
    assert fast == general


# --- Accept and custom attributes: any header text ---------------------------------

accept_text = st.text(
    st.sampled_from("*/abcjsonvtx-;,=q.0123456789 \t") | st.characters(codec="latin-1"),
    max_size=60,
)


@seeded(200)
@given(header=accept_text)
def test_parse_accept_takes_any_header(header):
    """Any Accept header: a list of lower-case media ranges, none with q=0 or empty."""
    ranges = parse_accept(header)
    assert all(r and r == r.lower() and r == r.strip() for r in ranges)


@seeded(300)
@given(
    accept=accept_text | st.sampled_from(["", "*/*", "text/*", "application/json;q=0"]),
    content_type=content_types(),
)
def test_any_accept_picks_a_renderer_or_is_not_acceptable(accept, content_type):
    """``select_renderer``: one of the renderers with its own media type, or a 406."""
    renderers = [cls() for cls in RENDERERS]
    django_request = APIRequestFactory().generic(
        "POST", "/invocations", b"1\n", content_type=content_type, HTTP_ACCEPT=accept
    )
    try:
        renderer, media_type = SageMakerContentNegotiation().select_renderer(
            Request(django_request), renderers
        )
    except NotAcceptable:
        return
    assert renderer in renderers
    # An alias is answered under its own name (formats.ALIASES).
    assert ALIASES.get(media_type, media_type) == renderer.media_type


@seeded(200)
@given(header=st.text(max_size=60))
def test_parse_custom_attributes_takes_any_header(header):
    """Any X-Amzn-SageMaker-Custom-Attributes text: a dict of stripped, lower-case,
    non-empty keys to stripped values."""
    attributes = parse_custom_attributes(header)
    for key, value in attributes.items():
        assert key
        assert key == key.strip().lower()
        assert value == value.strip()


tokens = st.text(
    st.characters(codec="ascii", categories=["L", "N"], include_characters="_-."),
    min_size=1,
    max_size=8,
)


@seeded(200)
@given(
    attributes=st.dictionaries(tokens.map(str.lower), tokens, max_size=4),
    separator=st.sampled_from([",", ", ", ";", " ; "]),
)
def test_custom_attributes_round_trip(attributes, separator):
    """``key=value`` pairs joined by commas or semicolons read back as written."""
    header = separator.join(f"{key}={value}" for key, value in attributes.items())
    assert parse_custom_attributes(header) == attributes
