"""Tests for toolkit.loaders: which files a corpus entry names, reading them, templates, and one-line errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from toolkit.loaders import DataError, expand, read_jsonl, read_text, render, takes, template_fields

# ------------------------------------------------------------------------------------------- which files


def test_expand_folder_recursively_skipping_hidden_and_other_files(tmp_path):
    for name in ["a.md", "sub/b.txt", "sub/deeper/c.jsonl", "d.csv", ".hidden/e.md", "sub/.f.md", "g.pdf", "h",
                 "i.markdown", "sub/J.MARKDOWN"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [(p.relative_to(tmp_path).as_posix(), file_id, explicit) for p, file_id, explicit in expand(tmp_path)] == [
        ("a.md", "a", False),
        ("d.csv", "d", False),
        ("i.markdown", "i", False),  # a .markdown file was skipped without a word
        ("sub/J.MARKDOWN", "sub/J", False),
        ("sub/b.txt", "sub/b", False),
        ("sub/deeper/c.jsonl", "sub/deeper/c", False),
    ]


def test_expand_glob_ids_are_relative_to_the_fixed_part(tmp_path):
    for name in ["notes/2023/a.md", "notes/2024/b.md", "notes/2024/c.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = expand(tmp_path / "notes" / "**" / "*.md")
    assert [(file_id, explicit) for _, file_id, explicit in found] == [("2023/a", False), ("2024/b", False)]


def test_linked_folders_are_not_entered_and_a_linked_file_is_read_once(tmp_path, caplog):
    for name in ["docs/a.md", "docs/sub/b.md", "elsewhere/c.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "docs" / "sub" / "loop").symlink_to(tmp_path / "docs")  # a link to a parent: ** would loop
    (tmp_path / "docs" / "other").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "docs" / "z.md").symlink_to(tmp_path / "docs" / "a.md")
    for entry in (tmp_path / "docs", tmp_path / "docs" / "**" / "*.md"):
        caplog.clear()
        assert [file_id for _, file_id, _ in expand(entry)] == ["a", "sub/b"], entry
        assert f"skipping {tmp_path / 'docs' / 'z.md'}: the same file as {tmp_path / 'docs' / 'a.md'}" in caplog.text


def test_a_file_is_read_once_across_entries_and_under_its_own_name(tmp_path, caplog):
    for name in ["a/x.txt", "other/o.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "a" / "ext.txt").symlink_to(tmp_path / "other" / "o.txt")  # sorts before the file it links to
    # Within an entry the real file wins, so its id (and the questions naming it as their source) holds.
    assert [i for _, i, _ in expand(tmp_path / "*" / "*.txt")] == ["a/x", "other/o"]
    assert f"skipping {tmp_path / 'a' / 'ext.txt'}: the same file as {tmp_path / 'other' / 'o.txt'}" in caplog.text
    # Across a recipe's entries (one `taken`): what an earlier entry took is skipped, link or not.
    taken: dict = {}
    assert [i for _, i, _ in expand(tmp_path / "other", taken)] == ["o"]
    assert [i for _, i, _ in expand(tmp_path / "a", taken)] == ["x"]
    assert expand(tmp_path / "other" / "o.txt", taken) == []
    assert f"skipping {tmp_path / 'other' / 'o.txt'}: an earlier corpus entry took it" in caplog.text
    # An earlier entry that reaches the file through a link takes it under the link's id: said, with the fix.
    taken = {}
    assert [i for _, i, _ in expand(tmp_path / "a", taken)] == ["ext", "x"]
    assert expand(tmp_path / "other", taken) == []
    assert (f"skipping {tmp_path / 'other' / 'o.txt'}: an earlier corpus entry took it through the link "
            f"{tmp_path / 'a' / 'ext.txt'}, under that link's id (list this file's entry first") in caplog.text


def test_a_path_with_glob_characters_that_exists_is_that_path(tmp_path):
    # "my docs [v1]" used to be read as a pattern ([v1] = one of v, 1) that matched nothing: "no file matches".
    folder = tmp_path / "my docs [v1] (ü)"
    folder.mkdir()
    (folder / "docs.jsonl").write_text('{"id": "a", "text": "Nebbiolo makes Barolo."}\n')
    assert expand(folder) == [(folder / "docs.jsonl", "docs", False)]
    assert expand(folder / "docs.jsonl") == [(folder / "docs.jsonl", "docs", True)]
    from toolkit.recipe import load_recipe

    recipe = load_recipe("recipes/wine.yaml", [f"data.corpus=['{folder / 'docs.jsonl'}']"])
    assert recipe.data.corpus[0].path == folder / "docs.jsonl"


@pytest.mark.parametrize("name, taken", [("report.md", True), ("report.markdown", True), ("REPORT.MARKDOWN", True),
                                         ("report.html", False), (".hidden/report.md", False)])
def test_takes_reads_a_future_file_as_expand_would(tmp_path, name, taken):
    # An output folder inside the corpus: a .markdown report written there would be indexed like a .md one.
    assert takes(tmp_path, tmp_path / "out" / name) is taken
    assert takes(tmp_path / "**" / "*.markdown", tmp_path / "out" / name) is (taken and name.endswith("markdown"))


def test_expand_one_file(tmp_path):
    (tmp_path / "Barolo Notes.md").write_text("x")
    assert expand(tmp_path / "Barolo Notes.md") == [(tmp_path / "Barolo Notes.md", "Barolo Notes", True)]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("missing.md", "missing.md: file not found"),
        ("empty", "empty: no .md, .markdown, .txt, .jsonl, .csv files in this folder"),
        ("*.rst", r"\*.rst: no .md, .markdown, .txt, .jsonl, .csv files match"),
        ("notes.pdf", "notes.pdf: unsupported corpus file type '.pdf'"),
    ],
)
def test_expand_errors(tmp_path, entry, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.pdf").write_text("x")
    (tmp_path / "notes.pdf").write_text("x")
    (tmp_path / "a.rst").write_text("x")
    with pytest.raises(DataError, match="^" + re.escape(str(tmp_path)) + "/" + message):
        expand(tmp_path / entry)


# ------------------------------------------------------------------------------------------- reading text


def test_non_utf8_text_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Rosé wines\nfrom Provence, côte\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_text(path)
    assert str(err.value) == f"{path}:1: not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"


def test_non_utf8_text_counts_lines_as_the_readers_do(tmp_path):
    # \r alone ends a line (as in Markdown, JSON lines and CSV files); \r\n once; a form feed never.
    path = tmp_path / "latin1.md"
    path.write_bytes(b"# Ros\xc3\xa9\rPage one.\x0cPage two.\r\nfrom Provence, c\xf4te\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text \(byte 0xf4 at offset 45\)"):
        read_text(path)


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfFino")
    assert read_text(path) == "Fino"


def test_unreadable_file(tmp_path):
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path))}: cannot read: Is a directory$"):
        read_text(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission(tmp_path):
    path = tmp_path / "secret.md"
    path.write_text("# Secret")
    path.chmod(0)
    with pytest.raises(DataError, match="cannot read: Permission denied"):
        read_text(path)


def test_unreadable_file_is_one_line_for_any_user(tmp_path, monkeypatch):
    # The test above is skipped as root, who reads any file; the same error path, with the OS error faked.
    path = tmp_path / "secret.md"
    path.write_text("# Secret")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: cannot read: Permission denied$"):
        read_text(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
        ('{"points": ' + "9" * 5000 + "}", "invalid JSON: an integer longer than 4300 digits"),
        ('{"answer": "Nebbiolo", "answer": "Merlot"}', "key 'answer' appears twice in one JSON object"),
        ('{"meta": {"a": 1, "a": 1}}', "key 'a' appears twice in one JSON object"),
    ],
)
def test_jsonl_lines_json_cannot_take_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Grape of Barolo?", "answer": "Nebbiolo"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}:2: {message}"


# ------------------------------------------------------------------------------------------- templates


def test_template_fields_and_render():
    template = "{title}: a {variety} from {country} {{sic}}"
    assert template_fields(template) == ["title", "variety", "country"]
    assert render(template, {"title": "T {x}", "variety": "V", "country": "C"}) == "T {x}: a V from C {sic}"


@pytest.mark.parametrize(
    "template, message",
    [("{price:.2f}", "only plain {column} placeholders"), ("{}", "empty placeholder"),
     ("{title", "expected '}'"), ("{title!r}", "only plain")],
)
def test_template_errors(template, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        template_fields(template)




def test_a_file_name_that_is_not_utf8(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / os.fsdecode(b"caf\xff.txt")).write_text("fine")
    with pytest.raises(DataError, match=r"caf\\udcff\.txt: the file name is not UTF-8; rename it$"):
        expand(tmp_path)


@pytest.mark.parametrize("placeholder", ["{title!z}", "{title!r}", "{title!r:>5}", "{price:.2f}"])
def test_template_error_shows_the_placeholder_as_written(placeholder):
    with pytest.raises(ValueError) as err:
        template_fields(f"{{variety}}: {placeholder}")
    assert str(err.value).endswith(f"only plain {{column}} placeholders, not {placeholder}")


def test_a_broken_link_is_skipped_and_said_so(tmp_path, caplog):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    (tmp_path / "docs" / "gone.md").symlink_to(tmp_path / "moved.md")
    for entry in (tmp_path / "docs", tmp_path / "docs" / "*.md"):
        caplog.clear()
        assert [file_id for _, file_id, _ in expand(entry)] == ["a"], entry
        assert f"skipping {tmp_path / 'docs' / 'gone.md'}: a link to {tmp_path / 'moved.md'}, which" in caplog.text


def test_a_glob_matching_only_inside_linked_folders_says_so(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.md").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"no .* files match outside linked folders \(not entered; .*other/c.md is"):
        expand(tmp_path / "docs" / "**" / "*.md")
