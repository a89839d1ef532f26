"""Checks for the hand-written wine knowledge base in data/wine/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from script_modules import load_script

DATA = Path(__file__).parent.parent / "data" / "wine"
DOC_TYPES = {"grape", "region", "style", "wine"}
QA_KEYS = {"question", "answer", "aliases", "source"}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    rows = read_jsonl(DATA / "docs.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate doc ids"
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def qa() -> list[dict]:
    return read_jsonl(DATA / "qa.jsonl")


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return read_jsonl(DATA / "train.jsonl")


@pytest.fixture(scope="module")
def evals() -> list[dict]:
    return read_jsonl(DATA / "eval.jsonl")


def test_docs(docs):
    assert len(docs) >= 48
    for doc_id, doc in docs.items():
        assert doc_id.split("-", 1)[0] in DOC_TYPES, doc_id
        assert doc_id == doc_id.lower() and " " not in doc_id, doc_id
        assert doc["title"].strip(), doc_id
        assert doc["text"].strip(), doc_id


def test_qa_rows(docs, qa, train, evals):
    assert len(train) + len(evals) >= 150
    for row in qa + train + evals:
        assert set(row) == QA_KEYS, row
        assert isinstance(row["aliases"], list), row
        assert all(isinstance(a, str) and a.strip() for a in row["aliases"]), row
        assert row["question"].strip() and row["answer"].strip(), row
        assert 1 <= len(row["answer"].split()) <= 4, row
        assert row["source"] in docs, row
        text = docs[row["source"]]["text"].lower()
        assert row["answer"].lower() in text, row


def test_questions_per_doc(docs, qa):
    per_doc = Counter(r["source"] for r in qa)
    for doc_id in docs:
        assert 3 <= per_doc[doc_id] <= 4, (doc_id, per_doc[doc_id])


def test_no_duplicate_questions(qa):
    questions = [r["question"] for r in qa]
    assert len(questions) == len(set(questions))


def test_split_is_by_document(train, evals):
    train_docs = {r["source"] for r in train}
    eval_docs = {r["source"] for r in evals}
    assert not train_docs & eval_docs
    assert {d.split("-", 1)[0] for d in eval_docs} == DOC_TYPES


def test_split_covers_qa_exactly(qa, train, evals):
    split_questions = [r["question"] for r in train + evals]
    assert len(split_questions) == len(set(split_questions))
    assert set(split_questions) == {r["question"] for r in qa}


def test_eval_size(evals):
    assert len(evals) >= 40


def test_split_is_reproducible(tmp_path):
    load_script(DATA / "split.py").split(DATA, tmp_path)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
