"""Bodies the seeded HTTP fuzz (``tests/test_fuzz_http.py``) once turned into 500s: each is
now a 400 ``invalid_input`` that says what was wrong."""

import io

import numpy as np
import pytest

from modelapp.exceptions import InvalidInput
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
