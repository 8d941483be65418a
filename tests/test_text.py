"""``modelapp.text``: caller-supplied text cut short and escaped before it is echoed or
logged."""

from __future__ import annotations

from modelapp.text import brief, cut, has_control, printable


def test_a_short_value_is_its_repr():
    assert brief("abc") == "'abc'"
    assert brief(1.5) == "1.5"


def test_a_long_value_says_how_much_was_left_out():
    text = brief("a" * 1000, 10)
    assert text == "'aaaaaaaaa… (992 more characters)"
    assert cut("b" * 30, 30) == "b" * 30
    assert cut("b" * 31, 30) == "b" * 30 + "… (1 more character)"


def test_control_characters_are_escaped_and_the_rest_kept():
    """Newlines, escapes, DEL, C1 and the Unicode line separators cannot start a line;
    accented and other non-ASCII text stays readable."""
    forged = "x\r\n2026-01-01 ERROR forged\x1b[31m\x7f\x85\u2028é"
    assert has_control(forged)
    assert printable(forged) == (
        "x\\r\\n2026-01-01 ERROR forged\\x1b[31m\\x7f\\x85\\u2028é"
    )
    assert printable("/models/café") == "/models/café"
    assert not has_control("/models/café")
