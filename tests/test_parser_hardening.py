"""Bodies the seeded HTTP fuzz (``tests/test_fuzz_http.py``) once turned into 500s: each is
now a 400 ``invalid_input`` that says what was wrong."""

import gc
import io
import tracemalloc

import numpy as np
import pytest

from modelapp.exceptions import InvalidInput, PayloadTooLarge
from modelapp.parsers import CSVParser, JSONLinesParser, JSONParser, NPYParser


def parse_csv(body: bytes, content_type: str):
    return CSVParser().parse(io.BytesIO(body), content_type)


def test_carriage_return_inside_a_quoted_csv_is_invalid_input():
    """Random bytes as latin-1 CSV, with a quote (csv module) and a bare carriage return
    inside a field: csv raises ``_csv.Error``, which is the body's fault (fixed on main
    too, in ``formats.csv_rows``)."""
    body = b'\x9d"\xb5\r\x9d.\xf0\n\xb7'
    with pytest.raises(InvalidInput, match="The CSV is malformed: new-line"):
        parse_csv(body, "text/csv; charset=latin-1")


def test_header_present_with_nothing_but_blank_lines_is_invalid_input():
    """``header=present`` and a body that holds no line at all once its trailing blank
    lines are dropped (a control character that splits lines): no records, not a 500."""
    with pytest.raises(InvalidInput, match="The CSV body has no records"):
        parse_csv(b"\x1d", "text/csv; header=present")


def test_header_only_is_invalid_input():
    """A body cut right after its header line has no records."""
    with pytest.raises(InvalidInput, match="The CSV body has no records"):
        parse_csv(b"a,b,c,d\n", "text/csv; header=present")


@pytest.mark.parametrize(
    "header",
    [
        # Unclosed brace: numpy's header filter (tokenize) raises TokenError.
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 4)          \n",
        # A carriage return inside the dict: ast raises SyntaxError.
        b"{'descr'\r: '<,f8', 'fortran_order': False, 'shape': (2, 4), }    \n",
    ],
)
def test_npy_with_a_broken_header_is_invalid_input(header):
    """An NPY body whose header dict does not parse is the body's fault."""
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with pytest.raises(InvalidInput, match="The body is not a valid NPY array"):
        NPYParser().parse(io.BytesIO(body), "application/x-npy")


@pytest.mark.parametrize(
    ("parser_class", "body"),
    [
        (JSONParser, b"[[[1, 2]], [[3, 4]]]"),
        (JSONParser, b'{"instances": [[[]]]}'),
        (JSONLinesParser, b"[[]]\n"),
        (JSONLinesParser, b"[[1], [2]]\n[[3], [4]]\n"),
    ],
)
def test_nested_arrays_in_a_record_are_invalid_input(parser_class, body):
    """Records of equal-width nested arrays (found by ``test_properties.py``): numpy
    would read them as one 3-D array, which is no batch; a 400 that names the nesting."""
    with pytest.raises(InvalidInput, match="nested arrays"):
        parser_class().parse(io.BytesIO(body), parser_class.media_type)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[[null, []]]", "an array"), (b'[["a", {"b": 1}]]', "an object")],
)
def test_an_array_or_object_as_a_field_is_invalid_input(body, kind):
    """A record whose field is itself an array or an object (found by
    ``test_properties.py``): not a number, and no text a table model could read."""
    with pytest.raises(InvalidInput, match=f"Record 1, feature 2 is {kind}"):
        JSONParser().parse(io.BytesIO(body), JSONParser.media_type)


@pytest.mark.parametrize("charset", ["punycode", "undefined"])
def test_a_codec_that_raises_unicode_error_is_invalid_input(charset):
    """Codecs whose decoder raises ``UnicodeError`` itself, not ``UnicodeDecodeError``
    (found by ``test_properties.py``): the charset is named in a 400, not a 500."""
    with pytest.raises(InvalidInput, match=f"The CSV body is not valid {charset}"):
        parse_csv(b"\x00", f"text/csv; charset={charset}")


@pytest.mark.parametrize("shape", [(10**15,), (2**40, 2**30), (10**9,)])
def test_npy_declaring_more_data_than_the_body_holds_is_invalid_input(shape):
    """A small body whose header declares a huge shape (found by
    ``test_properties.py``): refused before numpy allocates it (a ``MemoryError``, a
    500, for petabytes), with the declared and the held sizes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    with pytest.raises(InvalidInput, match=r"declares shape .* but the body holds 16"):
        NPYParser().parse(
            io.BytesIO(header.getvalue() + bytes(16)), NPYParser.media_type
        )


def test_npy_of_complex_numbers_is_invalid_input():
    """A complex NPY array (a ``ComplexWarning`` under ``test_properties.py``): casting
    it to float would silently drop the imaginary parts; a 400 instead."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1 + 2j, 3]]), allow_pickle=False)
    with pytest.raises(InvalidInput, match="complex128 holds complex numbers"):
        NPYParser().parse(io.BytesIO(buffer.getvalue()), NPYParser.media_type)


@pytest.mark.parametrize(
    ("descr", "shape", "data"),
    [
        ("<U0", (10**12,), b""),  # zero bytes declared: np.load makes it, astype fails
        ("|S0", (10,), b""),
        ("|V0", (10,), b""),
        ("<U3", (1, 2), "1.51.6".encode("utf-32-le")),
        ("<M8[D]", (1, 1), bytes(8)),
    ],
)
def test_npy_of_a_non_numeric_dtype_is_invalid_input(descr, shape, data):
    """Security review L1: an NPY array of text, bytes, void or dates (zero-size ones
    included, whose huge shape passes the size check) is a 400 naming the dtype, read
    from the header before numpy builds the array, never a ``MemoryError``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    with pytest.raises(InvalidInput, match="is not numeric: send booleans"):
        NPYParser().parse(io.BytesIO(header.getvalue() + data), NPYParser.media_type)


# --- Memory: a parser's peak is bounded by the body (security review M3) -----------

BODY_BYTES = 2 * 1024 * 1024
PEAK_BOUND = 15


def npy_body(dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((BODY_BYTES // (2 * np.dtype(dtype).itemsize), 2), dtype))
    return buffer.getvalue()


def repeated(record: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    return before + record * (BODY_BYTES // len(record)) + after


MEMORY_BODIES = {
    "csv numeric": (CSVParser, repeated(b"1,2\n")),
    "csv with gaps": (CSVParser, repeated(b"1,\n")),
    "csv with leading gaps": (CSVParser, repeated(b",2.5\n")),
    "csv with text": (CSVParser, repeated(b"a,1\n")),
    "csv with text and gaps": (CSVParser, repeated(b"pro,12.5\nbasic,\n")),
    "json arrays": (JSONParser, repeated(b"[1],", b"[", b"[1]]")),
    "json instances": (
        JSONParser,
        repeated(b"[1, null], ", b'{"instances": [', b"[1, null]]}"),
    ),
    "json flat list": (JSONParser, repeated(b"1,", b"[", b"1]")),
    "json records": (JSONParser, repeated(b'{"a":1,"b":2},', b"[", b'{"a":1,"b":2}]')),
    "json lines of scalars": (JSONLinesParser, repeated(b"1\n")),
    "json lines of arrays": (JSONLinesParser, repeated(b"[1,null]\n")),
    "json lines of objects": (JSONLinesParser, repeated(b'{"a":1,"b":null}\n')),
    "npy float64": (NPYParser, npy_body("<f8")),
    "npy uint8": (NPYParser, npy_body("|u1")),
}


@pytest.mark.parametrize("kind", MEMORY_BODIES)
def test_parser_peak_memory_is_bounded_by_the_body(kind):
    """A ~2 MB body of any format and content (blank fields, text, scalars, records)
    peaks below 15 times its size in the parser (``tracemalloc``: Python objects and
    numpy arrays), where a list per record and an object per field once took up to 100
    times (``bench/parsers.py`` prints the figures)."""
    parser_class, body = MEMORY_BODIES[kind]
    gc.collect()
    tracemalloc.start()
    try:
        batch = parser_class().parse(io.BytesIO(body), parser_class.media_type)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(batch) > 1000 or batch.flat
    assert peak <= PEAK_BOUND * len(body), f"{peak / len(body):.1f} times the body"


def test_a_body_whose_parsed_form_is_over_budget_is_payload_too_large(settings):
    """A body the fast paths cannot read, whose Python objects would take more than
    ``PARSED_MULTIPLE`` times the payload limit, is a 413 that says why, before the
    objects are made (here a 1 MB limit and a 1 MB JSON list of empty lists)."""
    settings.SMSERVE = {**getattr(settings, "SMSERVE", {}), "MAX_PAYLOAD_MB": 1}
    body = b"[" + b"[]," * (1024 * 1024 // 3 - 1) + b"[]]"
    with pytest.raises(PayloadTooLarge, match=r"20 times the payload limit"):
        JSONParser().parse(io.BytesIO(body), JSONParser.media_type)
