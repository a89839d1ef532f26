"""Tests for toolkit.index: chunking by embedder tokens, incremental persistent sync, and cosine search."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.data import Document, load_documents, load_qa
from toolkit.index import Chunk, Index, SyncCounts, chunk_documents
from toolkit.models import resolve_embedder

ROOT = Path(__file__).resolve().parents[1]
WINE = ROOT / "data" / "wine"
EMBEDDER = "packaged:all-minilm-l6-v2"


@pytest.fixture(scope="module")
def embedder_path() -> str:
    return resolve_embedder(EMBEDDER)


@pytest.fixture(scope="module")
def wine_docs() -> list[Document]:
    return load_documents([WINE / "docs.jsonl"])


@pytest.fixture(scope="module")
def wine(tmp_path_factory, embedder_path, wine_docs) -> tuple[Index, list[Chunk], SyncCounts]:
    """The shipped corpus indexed as recipes/wine.yaml does it (chunk size 128, overlap 16)."""
    index = Index(tmp_path_factory.mktemp("wine-index"), "wine", EMBEDDER, embedder_path)
    chunks = chunk_documents(wine_docs, index.embedder.tokenizer, 128, 16)
    return index, chunks, index.sync(chunks)


@pytest.fixture(scope="module")
def tokenizer(wine):
    return wine[0].embedder.tokenizer


@pytest.fixture(scope="module")
def long_doc(wine_docs) -> Document:
    words = " ".join(doc.text for doc in wine_docs).split()
    assert len(words) >= 600
    return Document("long", " ".join(words[:600]))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def spans(doc: Document, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """(start, end) of each chunk in its document's text, in order."""
    found, start = [], 0
    for chunk in chunks:
        start = doc.text.index(chunk.text, start)
        found.append((start, start + len(chunk.text)))
        start += 1
    return found


# ---------------------------------------------------------------------------------------------- chunking


def test_short_document_is_one_chunk(tokenizer):
    doc = Document("barolo", "  Barolo is made from Nebbiolo in Piedmont.\n")
    [chunk] = chunk_documents([doc], tokenizer, 64, 16)
    assert chunk.text == doc.text.strip()
    assert (chunk.source, chunk.position) == ("barolo", 0)
    assert re.fullmatch(r"barolo:0:[0-9a-f]{12}", chunk.id)


def test_blank_document_gives_no_chunks(tokenizer):
    assert chunk_documents([Document("empty", " \n ")], tokenizer, 64, 16) == []


def test_long_document_windows(tokenizer, long_doc):
    chunks = chunk_documents([long_doc], tokenizer, 64, 16)
    assert len(chunks) >= 5
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.source == "long" for c in chunks)

    where = spans(long_doc, chunks)
    # Together the windows cover the whole text.
    assert where[0][0] == 0 and where[-1][1] == len(long_doc.text)
    # Each window holds at most `size` of the document's embedder tokens.
    offsets = tokenizer(long_doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for start, end in where:
        assert 0 < sum(start <= s and e <= end for s, e in offsets) <= 64
    # Consecutive windows overlap: the start of chunk i+1 is the end of chunk i.
    for (text_a, (start_a, end_a)), (text_b, (start_b, _)) in zip(
        [(c.text, w) for c, w in zip(chunks, where, strict=True)][:-1],
        [(c.text, w) for c, w in zip(chunks, where, strict=True)][1:],
        strict=True,
    ):
        assert start_a < start_b < end_a
        assert text_b[:20] in text_a
        assert text_a.endswith(long_doc.text[start_b:end_a])


def test_single_token_words_stay_within_size(tokenizer):
    # Text made of whole-word tokens, so re-tokenizing a chunk gives exactly its window.
    words = "the red wine is made from grapes grown in old vineyards near a river".split()
    assert all(n_tokens(tokenizer, word) == 1 for word in words)
    doc = Document("plain", " ".join(words[i % len(words)] for i in range(500)))
    chunks = chunk_documents([doc], tokenizer, 64, 16)
    assert len(chunks) == 11  # starts 0, 48, ..., 480: every start below 500 - 16
    assert all(n_tokens(tokenizer, c.text) <= 64 for c in chunks)
    assert n_tokens(tokenizer, chunks[0].text) == 64


def test_chunks_respect_word_boundaries(tokenizer, long_doc):
    chunks = chunk_documents([long_doc], tokenizer, 64, 16)
    text = long_doc.text
    for chunk, (start, end) in zip(chunks, spans(long_doc, chunks), strict=True):
        assert start == 0 or not (text[start - 1].isalnum() and text[start].isalnum()), chunk.text[:30]
        assert end == len(text) or not (text[end - 1].isalnum() and text[end].isalnum()), chunk.text[-30:]
        assert n_tokens(tokenizer, chunk.text) <= 64


def test_chunk_ids_are_stable_and_content_addressed(tokenizer, long_doc):
    first = chunk_documents([long_doc], tokenizer, 64, 16)
    assert chunk_documents([long_doc], tokenizer, 64, 16) == first
    for chunk in first:
        assert re.fullmatch(rf"long:{chunk.position}:[0-9a-f]{{12}}", chunk.id)
    assert len({c.id for c in first}) == len(first)

    # The same text gives the same id, whatever else is chunked alongside it.
    other = Document("other", "Rioja is made mostly from Tempranillo.")
    alongside = chunk_documents([other, long_doc], tokenizer, 64, 16)
    assert [c.id for c in alongside if c.source == "long"] == [c.id for c in first]

    # Editing the end of a document changes only the id of the last chunk.
    edited = chunk_documents([Document("long", long_doc.text + " red.")], tokenizer, 64, 16)
    changed = chunk_documents([Document("long", long_doc.text + " white.")], tokenizer, 64, 16)
    assert len(edited) == len(changed)
    assert [c.id for c in edited[:-1]] == [c.id for c in changed[:-1]]
    assert edited[-1].id != changed[-1].id
    assert edited[-1].id.rsplit(":", 1)[0] == changed[-1].id.rsplit(":", 1)[0]


def test_wine_documents_fit_one_chunk_each(wine, wine_docs):
    # recipes/wine.yaml relies on this: a hit carries a whole document.
    _, chunks, counts = wine
    assert [c.text for c in chunks] == [doc.text.strip() for doc in wine_docs]
    assert counts == SyncCounts(added=len(wine_docs), deleted=0, unchanged=0)


# -------------------------------------------------------------------------------------------------- sync

SMALL = [
    Document("barolo", "Barolo is a red wine from Piedmont made from Nebbiolo."),
    Document("rioja", "Rioja is a Spanish region whose reds are mostly Tempranillo."),
    Document("sancerre", "Sancerre is a Loire appellation known for Sauvignon Blanc."),
]


def stored(index: Index) -> dict[str, str]:
    got = index.collection.get(include=["documents"])
    return dict(zip(got["ids"], got["documents"], strict=True))


def test_sync_embeds_only_what_changed(tmp_path, embedder_path, tokenizer):
    index = Index(tmp_path, "small", EMBEDDER, embedder_path)
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    assert len(chunks) == 3

    assert index.sync(chunks) == SyncCounts(added=3, deleted=0, unchanged=0)
    assert stored(index) == {c.id: c.text for c in chunks}
    assert index.sync(chunks) == SyncCounts(added=0, deleted=0, unchanged=3)

    edited = [SMALL[0], Document("rioja", "Rioja reds are mostly Tempranillo, often aged in oak."), SMALL[2]]
    new_chunks = chunk_documents(edited, tokenizer, 128, 16)
    assert index.sync(new_chunks) == SyncCounts(added=1, deleted=1, unchanged=2)
    assert stored(index) == {c.id: c.text for c in new_chunks}
    assert chunks[1].id not in stored(index)

    assert index.sync(new_chunks[:2]) == SyncCounts(added=0, deleted=1, unchanged=2)
    assert sorted(stored(index)) == sorted(c.id for c in new_chunks[:2])
    assert index.sync([]) == SyncCounts(added=0, deleted=2, unchanged=0)
    assert index.collection.count() == 0


def test_index_persists_across_objects_and_processes(tmp_path, embedder_path, tokenizer):
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    Index(tmp_path, "small", EMBEDDER, embedder_path).sync(chunks)

    reopened = Index(tmp_path, "small", EMBEDDER, embedder_path)
    assert stored(reopened) == {c.id: c.text for c in chunks}
    assert reopened.sync(chunks) == SyncCounts(added=0, deleted=0, unchanged=3)
    assert reopened.search(["Which grape makes Barolo?"], 1)[0][0].source == "barolo"

    # A fresh process reads the same collection from disk.
    script = (
        "import json, sys, chromadb\n"
        "from chromadb.config import Settings\n"
        "client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))\n"
        "print(json.dumps(sorted(client.get_collection('small').get(include=[])['ids'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == sorted(c.id for c in chunks)


def test_other_embedder_rebuilds_the_collection(tmp_path, embedder_path, tokenizer):
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    Index(tmp_path, "small", EMBEDDER, embedder_path).sync(chunks)

    rebuilt = Index(tmp_path, "small", "some-other-embedder", embedder_path)
    assert rebuilt.collection.count() == 0
    assert rebuilt.collection.metadata["embedder"] == "some-other-embedder"
    assert rebuilt.sync(chunks) == SyncCounts(added=3, deleted=0, unchanged=0)
    # Same name again: kept.
    again = Index(tmp_path, "small", "some-other-embedder", embedder_path)
    assert again.sync(chunks) == SyncCounts(added=0, deleted=0, unchanged=3)


def test_collections_in_one_folder_are_independent(tmp_path, embedder_path, tokenizer):
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    Index(tmp_path, "first", EMBEDDER, embedder_path).sync(chunks)
    second = Index(tmp_path, "second", EMBEDDER, embedder_path)
    assert second.collection.count() == 0
    assert Index(tmp_path, "first", EMBEDDER, embedder_path).collection.count() == 3


# ------------------------------------------------------------------------------------------------ search


def test_search_returns_k_hits_by_descending_cosine(wine):
    index, chunks, _ = wine
    by_id = {c.id: c for c in chunks}
    results = index.search(["Which grape is Barolo made from?", "What was Chenin Blanc called in South Africa?"], 3)
    assert len(results) == 2
    for hits in results:
        assert len(hits) == 3
        scores = [h.score for h in hits]
        assert all(-1.0 <= s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)
        for hit in hits:
            assert (hit.text, hit.source) == (by_id[hit.id].text, by_id[hit.id].source)
    assert results[0][0].source == "region-barolo"
    assert results[1][0].source == "grape-chenin-blanc"


def test_search_scores_are_cosine_similarities(wine):
    index, chunks, _ = wine
    [hit] = index.search([chunks[0].text], 1)[0]
    assert hit.id == chunks[0].id
    assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_search_without_queries(wine):
    assert wine[0].search([], 2) == []


@pytest.mark.parametrize(
    "question, source",
    [
        ("Besides Syrah, which grape partners Grenache in the classic GSM blend?", "grape-grenache"),
        ("In which valley do most Marlborough vineyards lie?", "region-marlborough"),
        ("What type of rock forms the steep vineyard slopes of the Mosel?", "region-mosel"),
        ("How long did Marani Tsiskari Rkatsiteli 2021 stay on its skins?", "wine-marani-tsiskari-rkatsiteli-2021"),
    ],
)
def test_gold_document_is_top_hit(wine, question, source):
    assert wine[0].search([question], 1)[0][0].source == source


def test_recall_at_2_on_eval_questions(wine):
    questions = load_qa(WINE / "eval.jsonl")
    results = wine[0].search([q.question for q in questions], 2)
    found = sum(q.source in {h.source for h in hits} for q, hits in zip(questions, results, strict=True))
    assert found / len(questions) >= 0.9
