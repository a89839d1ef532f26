"""Tests for toolkit.formats' Markdown reader: sections by heading, fences, line numbers, front matter as metadata,
and the document ids the README promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from toolkit.formats import load_file
from toolkit.loaders import DataError, Document


def docs_of(path, file_id=None, **kwargs) -> list[Document]:
    return [doc for doc, _ in load_file(path, file_id or path.stem, **kwargs).documents]


# ------------------------------------------------------------------------------------------- markdown


def test_markdown_sections_by_heading(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(
        "Tasting notes, kept since 2019.\n\n"
        "# Sherry\n\n"
        "## Fino\n\nAged under flor.\n\n"
        "```\n# not a heading inside a fence\n```\n\n"
        "## Oloroso ##\n\nAged without flor.\n\n"
        "# Port\n\nFortified in the Douro.\n\n"
        "## Fino\n\nA second 'Fino' heading under Port.\n\n"
        "## Fino\n\nAnd a third.\n"
    )
    docs = docs_of(path)
    assert [(d.id, d.title) for d in docs] == [
        ("notes", "notes"),  # text before the first heading
        ("notes#sherry/fino", "Sherry › Fino"),  # "# Sherry" alone has no body: no document
        ("notes#sherry/oloroso", "Sherry › Oloroso"),
        ("notes#port", "Port"),
        ("notes#port/fino", "Port › Fino"),
        ("notes#port/fino-2", "Port › Fino"),
    ]
    assert docs[1].text == "## Fino\n\nAged under flor.\n\n```\n# not a heading inside a fence\n```"
    assert docs[0].text == "Tasting notes, kept since 2019."


@pytest.mark.parametrize("name", ["notes.markdown", "NOTES.MARKDOWN", "notes.MD"])
def test_markdown_is_read_under_either_suffix_in_any_case(tmp_path, name):
    # A .markdown file (as some editors and static-site generators name them) was read as plain text, one document.
    path = tmp_path / name
    path.write_text("---\nregion: Jerez\n---\n# Sherry\n\n## Fino\n\nAged under flor.\n")
    docs = docs_of(path, "notes")
    assert [(d.id, d.metadata) for d in docs] == [("notes#sherry/fino", {"region": "Jerez"})]


def test_markdown_fence_closes_only_on_its_own_kind(tmp_path):
    # A ``` inside a ~~~ block (or a shorter fence inside a longer one) is text, not the end of the block.
    path = tmp_path / "notes.md"
    path.write_text("# A\ntext\n~~~\n```\n# not a heading\n~~~\n# B\nbody b\n"
                    "````\n```\n# still code\n````\n# C\nbody c\n")
    assert [d.id for d in docs_of(path)] == ["notes#a", "notes#b", "notes#c"]
    assert "# still code" in docs_of(path)[1].text


def test_markdown_errors_name_the_heading_line(tmp_path):
    from toolkit.data import load_documents

    path = tmp_path / "notes.md"
    path.write_text("# Fino\n\nOne.\n\n# Fino!\n\nTwo.\n")  # two headings, two slugs: fino and fino-2
    assert [d.id for d in load_documents([path])] == ["notes#fino", "notes#fino-2"]
    other = tmp_path / "notes.jsonl"
    other.write_text(json.dumps({"id": "notes#fino-2", "text": "clash"}) + "\n")
    clash = r"notes.jsonl:1: duplicate document id 'notes#fino-2' \(first in .*notes.md:5\)"
    with pytest.raises(DataError, match=clash):
        load_documents([path, other])


def test_markdown_lines_end_only_at_line_breaks(tmp_path):
    # A form feed (between the pages of text taken from a PDF), U+2028 and the other characters str.splitlines also
    # splits on end no Markdown line: "\x0c# 2 Results" is no heading, and each stays in the text as it was.
    path = tmp_path / "notes.md"
    page_one = "# Report\nPage one ends here.\x0c# 2 Results\nPage two.\u2028# 3 No\x85# 4 No\x0b\x1c\x1d\x1e\u2029"
    path.write_bytes((page_one + "\r\n\r# Fino\r\nBody.\n").encode())
    docs = docs_of(path)
    assert [(d.id, d.text) for d in docs] == [("notes#report", page_one), ("notes#fino", "# Fino\nBody.")]


def test_markdown_line_numbers_count_only_line_breaks(tmp_path):
    from toolkit.data import load_documents

    path = tmp_path / "notes.md"
    path.write_bytes("# Report\nPage one.\x0cPage two.\u2028\x85\x0b\r\n\r# Fino\r\nBody.\n".encode())
    # "# Fino" is on line 4: neither the form feed nor U+2028, U+0085 or \v ends a line.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "notes#fino", "text": "clash"}) + "\n")
    with pytest.raises(DataError, match=r"other.jsonl:1: duplicate document id 'notes#fino' \(first in .*notes.md:4\)"):
        load_documents([path, other])


FRONT_MATTER = (
    "---\n"
    "title: Barolo notes\n"
    "# a YAML comment, not a heading\n"
    "tags: [wine, nebbiolo]\n"
    "cellar: {row: 3}\n"
    "date: 2024-05-01\n"
    "vintage: 2016\n"
    "rating: 4.5\n"
    "score: .nan\n"  # Chroma would drop all of the chunk's metadata, `source` too
    "open: false\n"
    "source: https://example.com/barolo\n"  # the index's own key: left out, not an error
    "note:\n"
    "---\n"
)


def test_markdown_front_matter_is_metadata_not_text(tmp_path):
    # It was a document of its own ("title: Barolo notes\n..."), and its comment a heading.
    path = tmp_path / "notes.md"
    path.write_text(FRONT_MATTER + "Kept since 2019.\n\n# Barolo\n\nNebbiolo from Piedmont.\n")
    loaded = load_file(path, "notes").documents
    assert [(doc.id, doc.text, where) for doc, where in loaded] == [
        ("notes", "Kept since 2019.", str(path)),
        ("notes#barolo", "# Barolo\n\nNebbiolo from Piedmont.", f"{path}:16"),  # lines counted from the file's top
    ]
    # Scalars only (Chroma metadata holds no list or mapping); a date as ISO text; no None.
    metadata = {"title": "Barolo notes", "date": "2024-05-01", "vintage": 2016, "rating": 4.5, "open": False}
    assert [doc.metadata for doc, _ in loaded] == [metadata, metadata]


@pytest.mark.parametrize(
    "content",
    [
        "\ufeff---\ntitle: x\n---\n# A\nbody\n",  # after a BOM
        "---\r\ntitle: x\r\n...\r\n# A\r\nbody\r\n",  # closed by `...`, CRLF line ends
    ],
)
def test_markdown_front_matter_after_a_bom_or_closed_by_dots(tmp_path, content):
    path = tmp_path / "notes.md"
    path.write_bytes(content.encode())
    assert [(doc.id, doc.text, doc.metadata) for doc in docs_of(path)] == [("notes#a", "# A\nbody", {"title": "x"})]


def test_markdown_front_matter_keeps_a_leading_zero_and_a_clock_time_as_written(tmp_path):
    # YAML 1.1 (PyYAML's safe_load) read `01234` as the octal 668 and `1:30` as the base-60 90.
    path = tmp_path / "notes.md"
    path.write_text("---\nzip: 01234\ntime: 1:30\nyear: 2016\nhex: 0x1f\n---\nbody\n")
    assert docs_of(path)[0].metadata == {"zip": "01234", "time": "1:30", "year": 2016, "hex": 31}


def test_markdown_unclosed_front_matter_is_text(tmp_path):
    # A guard, not a fix: with no closing line the `---` is a thematic break, and everything stays text as before.
    path = tmp_path / "notes.md"
    path.write_text("---\ntitle: x\n\n# A\nbody\n")
    assert [(doc.id, doc.text, doc.metadata) for doc in docs_of(path)] == [
        ("notes", "---\ntitle: x", {}), ("notes#a", "# A\nbody", {})
    ]


def test_markdown_front_matter_that_is_invalid_yaml_is_a_one_line_error(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("---\ntitle: x\ntags: [a\ndate: 2024\n---\n# A\nbody\n")
    message = ":4: invalid YAML in the front matter: expected ',' or ']', but got ':'"
    with pytest.raises(DataError, match=f"^{re.escape(str(path) + message)}$"):
        docs_of(path)


@pytest.mark.parametrize("between", ["Just a paragraph between two rules.", "- a list\n- of points"])
def test_text_between_two_rules_at_the_top_is_no_front_matter(tmp_path, between):
    # YAML reads a paragraph as a string and a Markdown list as a list; only key: value lines make front matter.
    path = tmp_path / "notes.md"
    path.write_text(f"---\n{between}\n---\n# A\nbody\n")
    docs = [(doc.id, doc.text) for doc in docs_of(path)]
    assert docs == [("notes", f"---\n{between}\n---"), ("notes#a", "# A\nbody")]


def test_the_readme_gives_the_markdown_ids_the_loader_makes(tmp_path):
    # The README's table said `file#heading/subheading`; the ids are slugs, and a repeated heading gets -2.
    from toolkit.data import load_documents

    path = tmp_path / "grapes.md"
    path.write_text("# Grapes\n\n## Nebbiolo\n\nBarolo.\n\n## Pinot Noir\n\nBurgundy.\n\n## Nebbiolo\n\nBarbaresco.\n")
    ids = [doc.id for doc in load_documents([path])]
    assert ids == ["grapes#grapes/nebbiolo", "grapes#grapes/pinot-noir", "grapes#grapes/nebbiolo-2"]
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Your own data"):]
    section = section[:section.index("\n## ", 1)]
    assert all(f"`{doc_id}`" in section for doc_id in ids), ids
    assert "`file#heading/subheading`;" not in section
