"""The docs hold together: every relative link in README.md and docs/*.md reaches a file
that exists, every ``#anchor`` is a heading of its page (as GitHub makes anchors), the
front page links every page under docs/, and each page opens with its title. No network:
links with a scheme are not followed."""

from __future__ import annotations

from tests.support import ROOT
from tests.support.docs import anchors, broken_links, headings, links, pages, slug


def test_every_relative_link_and_anchor_resolves():
    """README.md and docs/*.md: each relative link's file exists and its anchor is a
    heading of the target page."""
    assert len(pages()) > 1
    assert broken_links(pages()) == []


def test_the_front_page_links_every_docs_page():
    """README's "Where to read on" reaches every page under docs/."""
    front = ROOT / "README.md"
    linked = {
        (front.parent / target.partition("#")[0]).resolve()
        for target in links(front.read_text())
        if target.partition("#")[0]
    }
    assert [p for p in pages()[1:] if p.resolve() not in linked] == []


def test_each_page_opens_with_its_title():
    """A page is whole: its first line is its one level-1 heading."""
    for page in pages():
        text = page.read_text()
        assert text.startswith("# "), page.name
        assert [h for _, level, h in headings(text) if level == 1] == [
            text.splitlines()[0][2:]
        ], page.name


def test_slugs_are_githubs():
    """Lower case; punctuation other than ``-`` and ``_`` dropped; spaces to ``-``, one
    each; code marks and link syntax dropped, their text kept."""
    assert slug("Calling it") == "calling-it"
    assert (
        slug("Multi-model endpoints (`SAGEMAKER_MULTI_MODEL=true`)")
        == "multi-model-endpoints-sagemaker_multi_modeltrue"
    )
    assert (
        slug("Distributed training: searches and forests over the job's hosts")
        == "distributed-training-searches-and-forests-over-the-jobs-hosts"
    )
    assert (
        slug("Training: `train` (`manage.py train`)") == "training-train-managepy-train"
    )
    assert slug("A - B") == "a---b"
    assert slug("See [the docs](x.md) *now*") == "see-the-docs-now"
    assert anchors("# A\n\n## A\n\n### A\n\n```\n# A\n```\n") == {"a", "a-1", "a-2"}


def test_a_broken_link_or_anchor_is_found(tmp_path, monkeypatch):
    """The check fails on a missing file, a missing anchor on another page or the same
    one, a duplicate heading's anchor past the last; links in code, with a scheme, and
    to existing files and anchors pass."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        "# A\n\n## Part\n\n## Part\n\nSee [the front](../README.md#front).\n"
    )
    (docs / "pic.png").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        "# Front\n\n"
        "[ok](docs/a.md) [ok](docs/a.md#part-1) [ok](#front) ![ok](docs/pic.png)\n"
        "[gone](docs/b.md) [no anchor](docs/a.md#part-2) [no anchor here](#back)\n"
        "[split across\nlines](docs/a.md#nope) [anchor in a picture](docs/pic.png#x)\n"
        "`[in code](docs/missing.md)` [web](https://example.com/none#x)\n\n"
        "```\n[in a block](docs/missing.md)\n```\n\n"
        "[ref]: docs/also-missing.md\n"
    )
    monkeypatch.setattr("tests.support.docs.ROOT", tmp_path)
    files = [tmp_path / "README.md", docs / "a.md"]
    assert broken_links(files) == [
        "README.md: docs/b.md: no such file",
        "README.md: docs/a.md#part-2: no such heading",
        "README.md: #back: no such heading",
        "README.md: docs/a.md#nope: no such heading",
        "README.md: docs/pic.png#x: an anchor into a non-Markdown file",
        "README.md: docs/also-missing.md: no such file",
    ]
