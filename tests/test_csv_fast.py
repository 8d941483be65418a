"""The fast numeric CSV path (``parsers.parse_numeric_csv``): same values and the same
errors as the general CSV parser, whichever path a body takes."""

from __future__ import annotations

import numpy as np
import pytest

from modelapp import parsers
from modelapp.exceptions import InvalidInput
from modelapp.parsers import CSVParser, parse_numeric_csv


def general(data: bytes, params: dict[str, str]) -> tuple:
    """The general parser's answer, with the fast path switched off."""
    saved = parsers.parse_numeric_csv
    parsers.parse_numeric_csv = lambda data, header: None
    try:
        return answer(data, params)
    finally:
        parsers.parse_numeric_csv = saved


def answer(data: bytes, params: dict[str, str]) -> tuple:
    try:
        batch = CSVParser().parse_bytes(data, params)
    except InvalidInput as exc:
        return ("error", str(exc.detail))
    if batch.rows is not None:  # text: kept as sent, for the model's schema
        return ("text", np.asarray(batch.rows).tolist(), batch.columns)
    # repr: NaN equals NaN as text, and -0.0 stays apart from 0.0.
    return ("ok", repr(batch.values.tolist()), batch.columns)


def rows_csv(matrix: np.ndarray) -> bytes:
    return "".join(",".join(map(repr, row)) + "\n" for row in matrix.tolist()).encode()


BODIES = [
    b"1,2\n3,4\n",
    b"1,2\r\n3,4\r\n\r\n\n",
    b"1,2\n\n3,4",
    b"\n1,2",
    b"1,2,3\n4,5",
    b"1,2\n3,4,5,6\n7",
    b"1,2,3\n4\n5,6\n7,8,9",
    b"1\n2\n3\n",
    b"1\n\n",
    b"1,a\n",
    b"1,,3\n",
    b",1\n2,\n",
    b",,,\n1,2,3,4\n",
    b"1,\n,2\n,\n",
    b",\n",
    b"1,,3\n" * 30000,
    b"1,2\n" * 20000 + b",\n" + b"3,\n" * 20000,
    b"1, ,3\n",
    b"1e5,2E-3,-4.25e+2\n",
    b"+1,2\n",
    b".5,1.\n",
    b"nan,inf\n",
    b"null,1\n",
    b"true,false\n",
    b"[1],2\n",
    b"{},1\n",
    b"1e999,1\n",
    b"99999999999999999999999,1\n",
    b"1 ,2\n",
    b" 1,2\t\n",
    b"1, 2\n 3,4 \n",
    b"0x10,1\n",
    b"007,1\n",
    b"1_0,2\n",
    b"1,2\r3,4\n",
    b'"1",2\n',
    b"1,7e307\n2,3\n",
    b"7e307\n",
    b"1,2\n3,4\n" * 20000,
    b"1,2\n3,4\n" * 20000 + b"5\n",
    b"1\n" * 100000 + b"1,2\n",
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: repr(b[:24]))
@pytest.mark.parametrize("header", [False, True])
def test_same_answer_as_the_general_parser(body, header):
    """Every body, valid or not, gets the general parser's values or error message."""
    params = {"header": "present"} if header else {}
    data = b"a,b\n" + body if header else body
    assert answer(data, params) == general(data, params)


@pytest.mark.parametrize("records", [1, 10, 1000, 15000])
def test_round_trip_floats_are_exact(records):
    """Floats written with repr (17 significant digits) read back bit for bit, across
    chunk boundaries, as one C-contiguous float64 array."""
    matrix = np.random.default_rng(records).standard_normal((records, 20))
    values = parse_numeric_csv(rows_csv(matrix), header=False).values
    assert values.dtype == np.float64
    assert values.flags.c_contiguous
    assert np.array_equal(values, matrix)


def test_a_ragged_row_in_a_later_chunk_is_an_error():
    """Widths are checked in every chunk, not only the first."""
    body = rows_csv(np.ones((20000, 5))) + b"1,2\n" + rows_csv(np.ones((10, 5)))
    assert parse_numeric_csv(body, header=False) is None
    assert answer(body, {}) == (
        "error",
        "Every record must have the same number of features: record 1 has 5, "
        "record 20001 has 2.",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"1,a\n",
        b'"1",2\n',
        b"nan\n",
        b"1\n\n2\n",
        b"\n1\n",
        b"1,2\n3\n",
        b"1,7e307\n",
        b"1, ,2\n",
    ],
)
def test_fast_path_declines_what_it_cannot_read_exactly(body):
    """Text, quotes, NaN, blank lines, ragged rows, fields of spaces and the line
    marker itself go to the general parser."""
    assert parse_numeric_csv(body, header=False) is None


def test_blank_fields_are_missing_values():
    """An empty field is NaN, at the start, middle or end of a line, in runs, and
    across chunk boundaries, as the general parser reads it."""
    body = b",1,,\n2,,,3\n" * 20000
    values = parse_numeric_csv(body, header=False).values
    assert values.shape == (40000, 4)
    expected = np.array([[np.nan, 1, np.nan, np.nan], [2, np.nan, np.nan, 3]] * 20000)
    assert np.array_equal(values, expected, equal_nan=True)


def test_header_present_gives_columns():
    """``header=present``: the first line names the columns; the rest is data."""
    batch = parse_numeric_csv(b"x, y\n1,2\n3,4\n", header=True)
    assert batch.columns == ["x", "y"]
    assert batch.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_negative_zero_reads_as_zero():
    """The one documented difference: JSON reads -0 as the integer 0 (0.0 == -0.0)."""
    assert parse_numeric_csv(b"-0,-0.0\n", header=False).values.tolist() == [
        [0.0, -0.0]
    ]


def test_other_charsets_take_the_general_path():
    """A charset that is not ASCII-compatible is decoded by the general parser."""
    body = "1,2\n".encode("utf-16")
    assert answer(body, {"charset": "utf-16"}) == ("ok", "[[1.0, 2.0]]", None)
