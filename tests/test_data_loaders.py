"""Tests for toolkit.data: corpus and question loaders, and their one-line errors naming file and line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from toolkit.data import QA, DataError, Document, load_documents, load_qa

WINE = Path(__file__).resolve().parents[1] / "data" / "wine"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------------------------- documents


def test_load_documents_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "barolo", "text": "Barolo is made from Nebbiolo.", "title": "Barolo"},
            "   ",  # blank lines are skipped
            {"id": "rioja", "text": "Rioja is mostly Tempranillo.", "extra": "ignored"},
        ],
    )
    assert load_documents([path]) == [
        Document("barolo", "Barolo is made from Nebbiolo.", "Barolo"),
        Document("rioja", "Rioja is mostly Tempranillo.", ""),
    ]


def test_load_documents_md_and_txt_are_one_document_each(tmp_path):
    (tmp_path / "sherry.md").write_text("# Sherry\n\nFino is aged under flor.\n", encoding="utf-8")
    (tmp_path / "tokaji.txt").write_text("Tokaji Aszú comes from Hungary.", encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [{"id": "port", "text": "Port is fortified."}])
    docs = load_documents([tmp_path / "sherry.md", jsonl, tmp_path / "tokaji.txt"])
    assert docs == [
        Document("sherry", "# Sherry\n\nFino is aged under flor.\n", "sherry"),
        Document("port", "Port is fortified.", ""),
        Document("tokaji", "Tokaji Aszú comes from Hungary.", "tokaji"),
    ]


def test_duplicate_id_names_both_places(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"},
                                                 {"id": "a", "text": "three"}])
    with pytest.raises(DataError) as err:
        load_documents([path])
    assert str(err.value) == f"{path}:3: duplicate document id 'a' (first in {path}:1)"


def test_duplicate_id_across_files(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "notes", "text": "one"}])
    (tmp_path / "notes.md").write_text("two")
    with pytest.raises(DataError, match=r"notes\.md: duplicate document id 'notes' \(first in .*docs\.jsonl:1\)"):
        load_documents([path, tmp_path / "notes.md"])


@pytest.mark.parametrize(
    "row, key",
    [
        ({"id": "a"}, "text"),
        ({"id": "a", "text": "  "}, "text"),
        ({"id": "a", "text": 3}, "text"),
        ({"text": "no id"}, "id"),
        ({"id": "", "text": "empty id"}, "id"),
        ({"id": "a", "text": "x", "title": 7}, "title"),
    ],
)
def test_bad_document_field_names_file_line_and_key(tmp_path, row, key):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "ok", "text": "fine"}, row])
    with pytest.raises(DataError) as err:
        load_documents([path])
    assert str(err.value) == f"{path}:2: '{key}' must be a non-empty string"


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "one"}, "", '{"id": "b", "text": '])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid JSON: "):
        load_documents([path])


def test_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", ['["a", "b"]'])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: expected a JSON object, got list$"):
        load_documents([path])


@pytest.mark.parametrize("name", ["docs.csv", "docs.json", "README"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("id,text\na,b\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: unsupported corpus file type '{path.suffix}'"):
        load_documents([path])


def test_no_documents(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="no documents in"):
        load_documents([path])


# ------------------------------------------------------------------------------------------- questions


def test_load_qa(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "Which grape makes Barolo?", "answer": "Nebbiolo", "aliases": ["Spanna"], "source": "barolo"},
            {"question": "Where is Rioja?", "answer": "Spain"},
        ],
    )
    assert load_qa(path) == [
        QA("Which grape makes Barolo?", "Nebbiolo", ["Spanna"], "barolo"),
        QA("Where is Rioja?", "Spain", [], ""),
    ]


@pytest.mark.parametrize(
    "row, key",
    [
        ({"answer": "Nebbiolo"}, "question"),
        ({"question": "Which grape?"}, "answer"),
        ({"question": "Which grape?", "answer": " "}, "answer"),
        ({"question": "Which grape?", "answer": 1997}, "answer"),
        ({"question": "Which grape?", "answer": "x", "source": 3}, "source"),
    ],
)
def test_qa_requires_question_and_answer(tmp_path, row, key):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, row])
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert str(err.value) == f"{path}:2: '{key}' must be a non-empty string"


@pytest.mark.parametrize("aliases", ["Spanna", ["Spanna", 3], {"a": "b"}, None])
def test_qa_aliases_must_be_a_list_of_strings(tmp_path, aliases):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a", "aliases": aliases}])
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert str(err.value) == f"{path}:1: 'aliases' must be a list of strings"


def test_qa_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no questions$"):
        load_qa(path)


# ------------------------------------------------------------------------------------- the shipped files


def test_shipped_wine_data_loads():
    docs = load_documents([WINE / "docs.jsonl"])
    train, evals = load_qa(WINE / "train.jsonl"), load_qa(WINE / "eval.jsonl")
    assert len(docs) >= 48
    assert len(train) + len(evals) >= 150
    ids = {doc.id for doc in docs}
    assert all(qa.source in ids for qa in train + evals)
    # Held-out questions are about documents never used in training.
    assert not {qa.source for qa in train} & {qa.source for qa in evals}
