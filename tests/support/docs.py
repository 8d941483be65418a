"""Reading the Markdown docs (README.md and docs/*.md) as GitHub renders them: headings and
their anchors, relative links, and the text of one section."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def pages() -> list[Path]:
    """The front page and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines of ``text`` with fenced code blocks blanked (kept as empty lines)."""
    out, fence = [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0] * len(opened.group(1))
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
                fence = None
            out.append("")
        else:
            out.append(line)
    return out


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, level, text)`` of each ATX heading outside code blocks."""
    found = []
    for index, line in enumerate(prose_lines(text)):
        match = HEADING.match(line)
        if match:
            found.append((index, len(match.group(1)), match.group(2)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading, before de-duplication: the rendered text (links as
    their text, no code or emphasis marks) lower-cased, every character that is not a
    letter, a digit, ``-``, ``_`` or a space dropped, each space a ``-``."""
    text = LINK.sub(lambda m: m.group(1), heading).lower()
    kept = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (the second of a name gets ``-1``,
    the third ``-2``, ...) and explicit ``<a name/id="...">``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, _, heading in headings(text):
        base = slug(heading)
        if base in seen:
            seen[base] += 1
            found.add(f"{base}-{seen[base]}")
        else:
            seen[base] = 0
            found.add(base)
    found.update(HTML_ANCHOR.findall("\n".join(prose_lines(text))))
    return found


def links(text: str) -> list[str]:
    """The target of every inline link, image and link definition outside code."""
    prose = CODE_SPAN.sub("", "\n".join(prose_lines(text)))
    return [m.group(2) for m in LINK.finditer(prose)] + DEFINITION.findall(prose)


def broken_links(files: list[Path]) -> list[str]:
    """``"<file>: <target>: <why>"`` for each relative link in ``files`` whose file does
    not exist, or whose ``#anchor`` is not a heading (or named anchor) of the target page.
    Links with a scheme (``https:``, ``mailto:``) are not followed."""
    problems = []
    for path in files:
        text = path.read_text()
        for target in links(text):
            if not target or SCHEME.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            if not dest.exists():
                problems.append(f"{name}: {target}: no such file")
                continue
            if not anchor:
                continue
            if dest.suffix != ".md" or not dest.is_file():
                problems.append(f"{name}: {target}: an anchor into a non-Markdown file")
            elif anchor not in anchors(dest.read_text()):
                problems.append(f"{name}: {target}: no such heading")
    return problems


def section(path: Path, title: str) -> str:
    """The text under the one heading ``title`` of ``path`` (any level), up to the next
    heading of the same or a higher level."""
    text = path.read_text()
    lines = text.splitlines()
    found = [(i, level) for i, level, heading in headings(text) if heading == title]
    assert len(found) == 1, f"{path.name}: {len(found)} headings {title!r}"
    start, level = found[0]
    end = next(
        (i for i, lvl, _ in headings(text) if i > start and lvl <= level), len(lines)
    )
    return "\n".join(lines[start + 1 : end])


@dataclass(frozen=True)
class Table:
    """One Markdown table of a page: where it is (the page, the heading it sits under and
    its place among that section's tables), its header cells and its body rows' cells."""

    page: str
    section: str
    index: int
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def cells(line: str) -> tuple[str, ...]:
    """A table line's cells, split on the pipes outside code spans."""
    found, current, code = [], [], False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            found.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    found.append("".join(current).strip())
    return tuple(found)


def tables(path: Path) -> list[Table]:
    """Every table of ``path`` outside code blocks (indented ones too), in order."""
    name = path.relative_to(ROOT).as_posix()
    found: list[Table] = []
    section, per_section = "", {}
    header: tuple[str, ...] | None = None
    rows: list[tuple[str, ...]] = []

    def close() -> None:
        if header is not None:
            index = per_section.get(section, 0)
            per_section[section] = index + 1
            found.append(Table(name, section, index, header, tuple(rows)))

    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            section = match.group(2)
        text = line.strip()
        if not text.startswith("|"):
            close()
            header, rows = None, []
            continue
        if header is None:
            header = cells(text)
        elif not set(text) <= set("|-: "):
            rows.append(cells(text))
    close()
    return found


OPENERS = {"(": ")", "[": "]", "{": "}"}


def clauses(text: str) -> list[str]:
    """``text`` cut at each ``;`` and ``,`` (followed by a space: ``1,000`` stays whole)
    outside brackets, code spans and quotes: the separately checkable statements of a table
    cell, in order, stripped."""
    found, current, closers, code, quoted = [], [], [], False, False
    for at, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif ch == '"' and not code:
            quoted = not quoted
        elif not (code or quoted):
            if ch in OPENERS:
                closers.append(OPENERS[ch])
            elif closers and ch == closers[-1]:
                closers.pop()
            elif ch in ",;" and not closers and text[at + 1 : at + 2] in (" ", ""):
                found.append("".join(current).strip())
                current = []
                continue
        current.append(ch)
    found.append("".join(current).strip())
    return [clause for clause in found if clause.strip(" .:")]


def plain(text: str) -> str:
    """``text`` as a docstring quotes it: no code or emphasis marks, no doubled
    backslashes, whitespace collapsed, lower case."""
    text = text.replace("\\\\", "\\").replace("`", "").replace("*", "")
    return " ".join(text.split()).lower()
