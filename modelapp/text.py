"""Caller-supplied text made safe to echo and to log: cut short, control characters
escaped.

Error details quote the offending value or key so that the caller can find it, but a
whole 6 MB field, or 100,000 unknown keys, would make a 6 MB answer and a 6 MB log line;
and a model name or a path holding a newline would start a forged log line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

# Characters of an echoed value or key list; the rest is counted, not shown.
BRIEF = 80
# Characters of an error detail in the log line of an invocation.
LOGGED_DETAIL = 1024
# Characters of any error detail sent to a caller (SageMaker shows callers the first
# 2 KB of the body).
DETAIL = 2000


def cut(text: str, limit: int) -> str:
    """``text`` cut after ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    more = len(text) - limit
    return f"{text[:limit]}… ({more} more character{'s' if more > 1 else ''})"


def brief(value: Any, limit: int = BRIEF) -> str:
    """``repr(value)``, cut after about ``limit`` characters with how many were left out:
    ``'aaaa…' (999920 more characters)``."""
    return cut(repr(value), limit)


def brief_list(items: Iterable[Any], limit: int = BRIEF) -> str:
    """The items' reprs joined by commas, as many as fit in about ``limit`` characters,
    then how many were left out: ``'a', 'b', … (99998 more)``."""
    items = list(items)
    shown: list[str] = []
    length = 0
    for item in items:
        text = repr(item)
        if shown and length + len(text) > limit:
            break
        shown.append(text if len(text) <= limit else brief(item, limit))
        length += len(text) + 2
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f", … ({rest} more)" if rest else "")


def _is_control(char: str) -> bool:
    # Cc: C0, DEL and C1; Zl/Zp: the line and paragraph separators, which some log
    # readers also break lines at.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that would break or fake a log line."""
    return any(_is_control(c) for c in text)


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``), for a log
    line; other text, non-ASCII included, is kept as it is."""
    # Printable text holds no control character (Cc is "Other", Zl/Zp "Separator"): a
    # check in C for the usual case, every invocation's path.
    if text.isprintable() or not has_control(text):
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if _is_control(c) else c
        for c in text
    )
