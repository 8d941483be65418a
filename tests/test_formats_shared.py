"""``formats.py``: one vocabulary of media types and the readers both sides share."""

from __future__ import annotations

import pytest

from modelapp import formats


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Text/CSV; charset=utf-8", formats.CSV),
        ("application/csv", formats.CSV),
        ("application/x-jsonlines", formats.JSONLINES),
        ("application/x-ndjson", formats.JSONLINES),
        ("application/vnd.apache.parquet", formats.PARQUET),
        ("application/json", formats.JSON),
        ("text/tab-separated-values", "text/tab-separated-values"),
        ("", None),
    ],
)
def test_canonical_names(given, expected):
    assert formats.canonical(given) == expected


def test_json_lines_numbers_lines_and_skips_blanks():
    data = b'\xef\xbb\xbf[1, 2]\n\n{"a": 1}\n3\n'
    assert formats.json_lines(data) == [(1, [1, 2]), (3, {"a": 1}), (4, 3)]
    with pytest.raises(formats.FormatError, match="Line 2 is not valid JSON") as info:
        formats.json_lines(b"[1]\n[2,\n")
    assert info.value.line == 2


def test_csv_rows_keep_quoted_commas_and_drop_trailing_blank_lines():
    assert formats.csv_rows('1,"a, b"\n2,c\n\n\n') == [["1", "a, b"], ["2", "c"]]
    assert formats.csv_rows("1,2\r\n3,4\r\n") == [["1", "2"], ["3", "4"]]


def test_csv_rows_malformed_is_a_format_error():
    """The csv module's own error (a bare carriage return) is a FormatError."""
    with pytest.raises(formats.FormatError, match="new-line character"):
        formats.csv_rows('a\rb,"c"\n')


def test_looks_like_header():
    """A first line without numbers above a line with numbers is a header; a string
    label in a data row is not."""
    assert formats.looks_like_header(b"label,a,b\n0,1,2\n")
    assert formats.looks_like_header(b"label,a,b\n")
    assert not formats.looks_like_header(b"0,1,2\n1,2,3\n")
    assert not formats.looks_like_header(b"setosa,5.1,3.5\nvirginica,6.1,2.5\n")
    assert not formats.looks_like_header(b"")
