"""Tests for toolkit.index: incremental persistent sync, kill-safety, cosine search, recall/MRR, the command."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import WINEMAG_COLUMNS, WINEMAG_ROWS

from toolkit.chunking import Chunk, chunk_documents
from toolkit.data import QA, DataError, Document, load_documents, load_qa
from toolkit.index_store import Index, IndexUnavailable, SyncCounts
from toolkit.metrics import retrieval_metrics
from toolkit.models import ModelError, folder_fingerprint, resolve_embedder

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
    assert index.sync(new_chunks) == SyncCounts(updated=1, unchanged=2)  # same doc and position, new text
    assert stored(index) == {c.id: c.text for c in new_chunks}
    assert chunks[1].id not in stored(index)

    assert index.sync(new_chunks[:2]) == SyncCounts(deleted=1, unchanged=2)
    assert sorted(stored(index)) == sorted(c.id for c in new_chunks[:2])
    assert index.sync([]) == SyncCounts(deleted=2)
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


def test_an_embedder_retrained_in_place_rebuilds_the_collection(tmp_path, embedder_path, tokenizer, caplog):
    # The index was keyed by the embedder's name alone: a folder retrained or replaced under the same name kept the
    # old model's vectors, and queries embedded by the new one searched them.
    folder = tmp_path / "my-embedder"
    folder.mkdir()
    for item in Path(embedder_path).iterdir():
        if item.name == "config_sentence_transformers.json":
            shutil.copy(item, folder / item.name)
        else:
            (folder / item.name).symlink_to(item)
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    first = Index(tmp_path / "index", "small", str(folder), str(folder))
    first.sync(chunks)
    assert first.manifest["embedder_files"] == folder_fingerprint(str(folder))
    (folder / "README.md").unlink()  # not the model: no rebuild
    assert Index(tmp_path / "index", "small", str(folder), str(folder), create=False).count() == 3
    config = folder / "config_sentence_transformers.json"
    config.write_text(config.read_text() + "\n")  # "retrained": other bytes in a file of the model
    with pytest.raises(IndexUnavailable, match=r"was built with other files of embedder '.*my-embedder' \(retrained"):
        Index(tmp_path / "index", "small", str(folder), str(folder), create=False)
    rebuilt = Index(tmp_path / "index", "small", str(folder), str(folder))
    assert "was built with other files of embedder" in caplog.text and rebuilt.count() == 0
    assert rebuilt.manifest["embedder_files"] == folder_fingerprint(str(folder))
    assert folder_fingerprint("sentence-transformers/all-MiniLM-L6-v2") is None  # a hub id: the name alone


def test_other_embedder_rebuilds_the_collection(tmp_path, embedder_path, tokenizer, caplog):
    chunks = chunk_documents(SMALL, tokenizer, 128, 16)
    Index(tmp_path, "small", EMBEDDER, embedder_path).sync(chunks)

    rebuilt = Index(tmp_path, "small", "some-other-embedder", embedder_path)
    assert f"was built with embedder '{EMBEDDER}'; rebuilding it for 'some-other-embedder'" in caplog.text
    assert rebuilt.manifest == {"embedder": "some-other-embedder", "dimension": 384,
                                "embedder_files": folder_fingerprint(embedder_path)}
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


# -------------------------------------------------------------------------------------- incremental update

NOTES = [Document(f"note-{i}", f"Note {i}: a {grape} from {region}.", "", {"n": i})
         for i, (grape, region) in enumerate([("Nebbiolo", "Piedmont"), ("Riesling", "Mosel"), ("Malbec", "Mendoza"),
                                              ("Syrah", "the Rhône"), ("Chenin Blanc", "the Loire")])]


def test_update_embeds_only_what_changed(tmp_path, embedder_path):
    first = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    assert first.update(NOTES, 128, 16) == SyncCounts(added=5)

    # A fresh process would start like this: nothing changed, so the embedder is never even loaded.
    again = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    assert again.update(NOTES, 128, 16) == SyncCounts(unchanged=5)
    assert again._embedder is None

    edited = [*NOTES[:1], Document("note-1", "Note 1: a dry Riesling from the Mosel.", "", {"n": 1}), *NOTES[2:4],
              Document("note-9", "Note 9: a Grenache from Priorat.")]
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    assert index.update(edited, 128, 16) == SyncCounts(added=1, updated=1, deleted=1, unchanged=3)
    assert sorted(hit.split(":")[0] for hit in index.collection.get()["ids"]) == sorted(d.id for d in edited)

    # Only metadata changed: the chunk is rewritten with it (and re-embedded, being a new id).
    moved = [*edited[:4], Document("note-9", "Note 9: a Grenache from Priorat.", "", {"country": "Spain"})]
    assert index.update(moved, 128, 16) == SyncCounts(updated=1, unchanged=4)
    hit = index.search(["Grenache from Priorat"], 1)[0][0]
    assert (hit.source, hit.metadata) == ("note-9", {"source": "note-9", "position": 0, "country": "Spain"})


def test_update_without_the_memo_rechunks_but_embeds_nothing(tmp_path, embedder_path, caplog):
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    index.update(NOTES, 128, 16)
    (tmp_path / "notes.chunks.json").unlink()
    assert Index(tmp_path, "notes", EMBEDDER, embedder_path).update(NOTES, 128, 16) == SyncCounts(unchanged=5)
    assert "chunk memo" not in caplog.text  # a missing memo is a first run's normal state
    (tmp_path / "notes.chunks.json").write_text("{not json")
    assert Index(tmp_path, "notes", EMBEDDER, embedder_path).update(NOTES, 128, 16) == SyncCounts(unchanged=5)
    assert "ignoring the unreadable chunk memo" in caplog.text  # a corrupt one is said, not swallowed


@pytest.mark.parametrize("documents", [[], {"x": 5}, {"x": "note-0:0:abc"}, {"x": [1]}])
def test_a_memo_of_another_shape_is_ignored_and_said(tmp_path, embedder_path, caplog, documents):
    # Valid JSON whose documents were not a mapping of hashes to id lists failed with a traceback (a list: 'list'
    # object has no attribute 'get'), or matched a string's characters against the stored ids.
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    index.update(NOTES, 128, 16)
    memo = json.loads((tmp_path / "notes.chunks.json").read_text())
    if isinstance(documents, dict):  # the bad value under a hash that a document has
        documents = {next(iter(memo["documents"])): next(iter(documents.values()))}
    (tmp_path / "notes.chunks.json").write_text(json.dumps({**memo, "documents": documents}))
    assert Index(tmp_path, "notes", EMBEDDER, embedder_path).update(NOTES, 128, 16) == SyncCounts(unchanged=5)
    assert "ignoring the unreadable chunk memo" in caplog.text
    assert json.loads((tmp_path / "notes.chunks.json").read_text()) == memo  # rewritten whole


@pytest.mark.parametrize("key", ["#tags", "$price", "", "chroma:document"])
def test_metadata_chroma_refuses_is_one_line_and_leaves_the_index(tmp_path, embedder_path, key):
    # Chroma refused the batch with its own error (a traceback from the index command) after the stale chunks of
    # the same sync were already deleted.
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    index.update(NOTES, 128, 16)
    before = sorted(index.collection.get()["ids"])
    docs = [*NOTES[1:], Document("note-9", "Note 9: a Grenache from Priorat.", "", {key: "x"})]
    with pytest.raises(DataError, match=re.escape(f"document 'note-9': metadata key {key!r} cannot be stored in the "
                                                  "index")):
        Index(tmp_path, "notes", EMBEDDER, embedder_path).update(docs, 128, 16)
    assert sorted(Index(tmp_path, "notes", EMBEDDER, embedder_path).collection.get()["ids"]) == before


def test_new_chunk_settings_rechunk_every_document(tmp_path, embedder_path, long_doc):
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    index.update([long_doc, *NOTES], 128, 16)
    counts = index.update([long_doc, *NOTES], 64, 16)
    assert counts.unchanged == 5  # the short notes are one chunk either way
    assert counts.updated + counts.added > 0


def test_chunk_size_beyond_what_the_embedder_reads(tmp_path, embedder_path):
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    with pytest.raises(IndexUnavailable, match=r"chunk_size 300 is more than embedder .* reads \(254 tokens\)"):
        index.update(NOTES, 300, 16)


def test_search_mode_never_builds(tmp_path, embedder_path):
    with pytest.raises(IndexUnavailable, match="no index at"):
        Index(tmp_path / "missing", "notes", EMBEDDER, embedder_path, create=False)
    assert not (tmp_path / "missing").exists()
    Index(tmp_path, "notes", EMBEDDER, embedder_path).update(NOTES, 128, 16)
    with pytest.raises(IndexUnavailable, match="no collection 'other'"):
        Index(tmp_path, "other", EMBEDDER, embedder_path, create=False)
    with pytest.raises(IndexUnavailable, match=f"was built with embedder '{EMBEDDER}', not 'another'"):
        Index(tmp_path, "notes", "another", embedder_path, create=False)
    assert Index(tmp_path, "notes", EMBEDDER, embedder_path, create=False).count() == 5


def test_an_embedder_that_fails_to_load_leaves_the_index(tmp_path, embedder_path):
    Index(tmp_path, "notes", EMBEDDER, embedder_path).update(NOTES, 128, 16)
    with pytest.raises(ModelError, match="cannot load embedder 'broken'"):
        Index(tmp_path, "notes", "broken", str(tmp_path / "no-such-model"))
    assert Index(tmp_path, "notes", EMBEDDER, embedder_path).count() == 5


def test_killed_mid_index_completes_on_the_next_run(tmp_path, monkeypatch, capsys):
    """SIGKILL the index command once its first batch is stored; the next run adds exactly what is missing."""
    docs = [{"id": f"note-{i}", "text": f"Note {i}: a {grape} tasted in {1990 + i % 30}, {aroma}."}
            for i, (grape, aroma) in enumerate(
                (["Nebbiolo", "Riesling", "Malbec", "Syrah", "Merlot"][i % 5], ["plum", "lime", "smoke"][i % 3])
                for i in range(300))]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "Note 7?", "answer": "Syrah", "source": "note-7"}))
    recipe = tmp_path / "notes.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "data: {corpus: [docs.jsonl], train: qa.jsonl, eval: qa.jsonl}\n"
        "retrieval: {collection: notes, embed_batch_size: 8, write_batch_size: 32}\n"
        "prompt: {system: Answer.}\n"
        "rewards: [{name: answer_match}]\n"
    )
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.index", str(recipe)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    stored = None
    try:
        for line in proc.stderr:
            if (found := re.match(r"stored (\d+)/300 chunks", line)) and int(found.group(1)) > 0:
                stored = int(found.group(1))
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stderr.close()
    assert stored == 32, "the first batch never landed"
    # Until the build is finished, readers (search, chat) refuse the index rather than answer from some of it.
    with pytest.raises(IndexUnavailable, match="is incomplete \\(its last build failed or was stopped\\)$"):
        Index(tmp_path / "out" / "index", "notes", EMBEDDER, resolve_embedder(EMBEDDER), create=False)

    from toolkit.index import main

    monkeypatch.chdir(tmp_path)
    assert main([str(recipe)]) == 0
    counts = dict(re.findall(r"(added|updated|deleted|unchanged) (\d+)", capsys.readouterr().out))
    assert int(counts["added"]) + int(counts["unchanged"]) == 300
    assert int(counts["unchanged"]) >= 32 and counts["updated"] == counts["deleted"] == "0"

    index = Index(tmp_path / "out" / "index", "notes", EMBEDDER, resolve_embedder(EMBEDDER), create=False)
    assert sorted(i.split(":")[0] for i in index.collection.get()["ids"]) == sorted(d["id"] for d in docs)
    # Both what the killed run stored and what the rerun added are searchable (the HNSW index is whole).
    for doc in docs[::37]:
        assert index.search([doc["text"]], 1)[0][0].source == doc["id"]
    assert main([str(recipe)]) == 0  # and a third run finds nothing to do
    assert "added 0  updated 0  deleted 0  unchanged 300" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- recall and MRR


def test_retrieval_metrics(wine):
    questions = load_qa(WINE / "eval.jsonl")
    metrics = retrieval_metrics(wine[0], [*questions, QA("Who?", "nobody")], top_k=2)
    assert list(metrics) == ["questions", "recall@1", "recall@2", "recall@5", "recall@10", "mrr@10"]
    assert metrics["questions"] == len(questions)  # a question without a source does not count
    assert 0.9 <= metrics["recall@1"] <= metrics["recall@2"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1
    assert metrics["recall@1"] <= metrics["mrr@10"] <= metrics["recall@10"]
    assert retrieval_metrics(wine[0], [QA("Who?", "nobody")], top_k=1) == {"questions": 0}


def test_retrieval_metrics_counts_ranks(tmp_path, embedder_path):
    index = Index(tmp_path, "notes", EMBEDDER, embedder_path)
    index.update(NOTES, 128, 16)
    questions = [QA(NOTES[0].text, "x", [], "note-0"), QA(NOTES[1].text, "x", [], "note-3"),
                 QA(NOTES[2].text, "x", [], "elsewhere")]
    metrics = retrieval_metrics(index, questions, top_k=1)
    # note-0 is found first; note-3 somewhere in the top 5 of 5 notes, never first; "elsewhere" never.
    assert metrics["recall@1"] == round(1 / 3, 4)
    assert metrics["recall@5"] == metrics["recall@10"] == round(2 / 3, 4)
    assert round(1 / 3, 4) < metrics["mrr@10"] < round(2 / 3, 4)


# ------------------------------------------------------------------------------------------------ the command

WINEMAG_RECIPE = ROOT / "recipes" / "winemag.yaml"


def write_csv(path: Path, rows=WINEMAG_ROWS, header=WINEMAG_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A folder with a 10-review CSV, and the overrides that point recipes/winemag.yaml at it."""
    tmp = tmp_path_factory.mktemp("winemag")
    return tmp, [f"data.corpus.0.path={write_csv(tmp / 'reviews.csv')}", f"output_dir={tmp / 'out'}"]


def run_index(capsys, *argv) -> tuple[int, str, str]:
    from toolkit.index import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_index_command_counts(built, capsys):
    tmp, overrides = built
    code, out, _ = run_index(capsys, WINEMAG_RECIPE, *overrides)
    assert code == 0
    assert f"index {tmp / 'out' / 'index'} (collection winemag, packaged:all-minilm-l6-v2): 10 documents, 10 chunks" \
        in out
    assert "added 10  updated 0  deleted 0  unchanged 0" in out
    code, out, _ = run_index(capsys, WINEMAG_RECIPE, *overrides)
    assert "added 0  updated 0  deleted 0  unchanged 10" in out

    # One review edited, one gone: the update replaces and deletes exactly those.
    rows = [row[:] for row in WINEMAG_ROWS[:-1]]
    rows[0][2] = "Now tasting of leather and tobacco."
    (tmp / "v2").mkdir(exist_ok=True)
    edited = [f"data.corpus.0.path={write_csv(tmp / 'v2' / 'reviews.csv', rows)}", overrides[1]]
    code, out, _ = run_index(capsys, WINEMAG_RECIPE, *edited)
    assert "9 documents, 9 chunks" in out and "added 0  updated 1  deleted 1  unchanged 8" in out
    code, out, _ = run_index(capsys, WINEMAG_RECIPE, *overrides)  # back to the original
    assert "added 1  updated 1  deleted 0  unchanged 8" in out


def test_index_command_eval(built, capsys):
    _, overrides = built
    code, out, _ = run_index(capsys, WINEMAG_RECIPE, *overrides, "--eval")
    assert code == 0
    found = re.search(r"retrieval on (\d+) eval questions: recall@1 ([\d.]+)  recall@5 ([\d.]+)  recall@10 ([\d.]+)  "
                      r"mrr@10 ([\d.]+)", out)
    assert found, out
    assert int(found.group(1)) >= 2
    assert all(0 <= float(v) <= 1 for v in found.groups()[1:])


def test_index_command_eval_without_gold_sources_says_so(tmp_path, capsys):
    # It printed "retrieval on 0 eval questions: " and nothing after it.
    questions = tmp_path / "eval.jsonl"
    questions.write_text(json.dumps({"question": "Which grape is Barolo made from?", "answer": "Nebbiolo"}) + "\n")
    code, out, _ = run_index(capsys, ROOT / "recipes" / "wine.yaml", f"output_dir={tmp_path / 'out'}",
                             f"data.eval={questions}", "--eval")
    assert code == 0
    assert "retrieval not scored: no eval question names its gold source document (the `source` field; 1 eval " \
           "question read)" in out, out
    # One document, one chunk, one question: no "1 documents".
    doc = tmp_path / "barolo.txt"
    doc.write_text("Barolo is made from Nebbiolo.\n")
    questions.write_text(json.dumps({"question": "Which grape is Barolo made from?", "answer": "Nebbiolo",
                                     "source": "barolo"}) + "\n")
    code, out, _ = run_index(capsys, ROOT / "recipes" / "wine.yaml", f"output_dir={tmp_path / 'one'}",
                             f"data.corpus=[{doc}]", f"data.eval={questions}", "--eval")
    assert code == 0 and ": 1 document, 1 chunk" in out and "retrieval on 1 eval question: recall@1 1.000" in out, out


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_variety_column", "{csv}:1: template 'variety' is not a column of this file (columns: id, country, "),
        ("short_row", "{csv}:3: row 2 has 11 of 14 columns: no value for 'title', 'variety'"),
        ("latin1", "{csv}:2: not UTF-8 text (byte 0xe0 at offset"),
        ("empty", "{csv}: empty CSV file (no header)"),
        ("missing", "data.corpus.0.path: file not found: {csv}"),
        ("no_rows", "{csv}: no documents: no row below the header has a value in the template's columns"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_index(built, capsys, case, expected):
    tmp, overrides = built
    run_index(capsys, WINEMAG_RECIPE, *overrides)  # the index as built from the good file
    memo = (tmp / "out" / "index" / "winemag.chunks.json").read_bytes()
    path = tmp / f"{case}.csv"
    if case == "no_variety_column":
        write_csv(path, [row[:12] + row[13:] for row in WINEMAG_ROWS], WINEMAG_COLUMNS[:12] + WINEMAG_COLUMNS[13:])
    elif case == "short_row":
        write_csv(path, [WINEMAG_ROWS[0], WINEMAG_ROWS[1][:11]])
    elif case == "latin1":
        path.write_bytes(",".join(WINEMAG_COLUMNS).encode() + "\n1,Italy,Vulkà".encode("latin-1"))
    elif case == "empty":
        path.write_text("")
    elif case == "no_rows":
        write_csv(path, [])
    code, _, err = run_index(capsys, WINEMAG_RECIPE, f"data.corpus.0.path={path}", overrides[1])
    assert code == 2
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: ") and expected.format(csv=path) in line, line
    assert (tmp / "out" / "index" / "winemag.chunks.json").read_bytes() == memo
    index = Index(tmp / "out" / "index", "winemag", EMBEDDER, resolve_embedder(EMBEDDER), create=False)
    assert index.count() == 10


# ------------------------------------------------------------------------------- an index that cannot be used


def small_index(folder: Path, embedder_path: str, collection: str = "small") -> None:
    index = Index(folder, collection, EMBEDDER, embedder_path)
    index.update(SMALL, 128, 16)
    index.client.close()  # so that the next open reads the file again instead of Chroma's per-folder cache


@pytest.mark.parametrize("create", [False, True])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_index_is_one_line_and_kept(tmp_path, embedder_path, damage, create):
    folder = tmp_path / "index"
    small_index(folder, embedder_path)
    db = folder / "chroma.sqlite3"
    if damage == "garbage":
        db.write_text("garbage\n")
    else:
        os.truncate(db, 8192)
    before = {path: path.stat().st_size for path in folder.rglob("*")}
    reason = "file is not a database" if damage == "garbage" else "database disk image is malformed"
    with pytest.raises(IndexUnavailable) as err:
        Index(folder, "small", EMBEDDER, embedder_path, create=create)
    assert str(err.value).startswith(f"the index at {folder} is unreadable (")
    assert reason in str(err.value) and str(err.value).endswith("): delete that folder to rebuild it")
    assert {path: path.stat().st_size for path in folder.rglob("*")} == before  # never deleted or rebuilt


def test_the_index_command_on_a_damaged_index(built, capsys, tmp_path):
    _, overrides = built
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "chroma.sqlite3").write_text("garbage\n")
    code, _, err = run_index(capsys, WINEMAG_RECIPE, overrides[0], f"output_dir={tmp_path}")
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line == f"error: the index at {tmp_path / 'index'} is unreadable (error returned from database: " \
                   "(code: 26) file is not a database): delete that folder to rebuild it"
    assert (tmp_path / "index" / "chroma.sqlite3").read_text() == "garbage\n"


@pytest.mark.parametrize("create", [True, False])
def test_an_index_folder_that_is_a_file(tmp_path, embedder_path, create):
    (tmp_path / "index").write_text("x")
    with pytest.raises(IndexUnavailable, match=rf"^{re.escape(str(tmp_path / 'index'))} is a file, not a folder: "):
        Index(tmp_path / "index", "small", EMBEDDER, embedder_path, create=create)
    with pytest.raises(IndexUnavailable) as err:
        Index(tmp_path / "index" / "sub" / "index", "small", EMBEDDER, embedder_path, create=create)
    assert str(err.value) == f"cannot use {tmp_path}/index/sub/index as the index folder: {tmp_path}/index is a " \
                             "file, not a folder"
    assert (tmp_path / "index").read_text() == "x"


def test_an_index_folder_that_cannot_be_created(tmp_path, embedder_path, monkeypatch):
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):  # root may write anywhere: a read-only folder would not stop these tests
        if self == tmp_path / "out" / "index":
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(IndexUnavailable, match=f"^cannot create the index folder {tmp_path}/out/index: Permission "
                                               "denied$"):
        Index(tmp_path / "out" / "index", "small", EMBEDDER, embedder_path)


def test_an_index_a_failed_first_build_left_empty_is_refused_by_readers(tmp_path, embedder_path):
    """search and chat (create=False) used to take it for a built index and find "no chunks" with exit 0."""
    folder = tmp_path / "out" / "index"
    index = Index(folder, "small", EMBEDDER, embedder_path)
    with pytest.raises(DataError, match="^document 'bad': .* lone surrogate"):
        index.update([*SMALL, Document("bad", "caf\ud800")], 128, 16)
    with pytest.raises(IndexUnavailable, match=rf"^the index at {folder} holds no chunks \(its first build failed"):
        Index(folder, "small", EMBEDDER, embedder_path, create=False)
    # A run (create=True) simply builds it.
    assert Index(folder, "small", EMBEDDER, embedder_path).update(SMALL, 128, 16).added == 3
    assert Index(folder, "small", EMBEDDER, embedder_path, create=False).count() == 3


def test_a_failed_update_keeps_the_existing_index(tmp_path, embedder_path):
    small_index(tmp_path, embedder_path)
    index = Index(tmp_path, "small", EMBEDDER, embedder_path)
    with pytest.raises(DataError):
        index.update([Document("bad", "caf\ud800")], 128, 16)
    assert index.count() == 3 and (tmp_path / "chroma.sqlite3").is_file()


@pytest.mark.parametrize("path, message", [("", "it names no model"), ("{tmp}/empty", "Unrecognized model")])
def test_an_embedder_that_fails_to_load_leaves_no_index(tmp_path, path, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=f"^cannot load embedder 'mine': .*{message}"):
        Index(tmp_path / "out" / "index", "small", "mine", path.format(tmp=tmp_path))
    assert not (tmp_path / "out").exists()


def test_the_index_command_with_a_lone_surrogate_in_the_corpus(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "\\ud800"}\n')
    code, _, err = run_index(capsys, ROOT / "recipes" / "wine.yaml", f"output_dir={tmp_path / 'out'}",
                             f"data.corpus=[{corpus}]")
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"error: {corpus}:1: 'text' holds a lone surrogate '\\ud800'")
    assert not (tmp_path / "out").exists()


def test_the_index_command_prints_a_bracketed_folder_as_it_is(built, capsys, tmp_path):
    # rich read "[x]" in a folder name as markup and printed the path without it.
    out = tmp_path / "o [bold]x[/bold] [x]"
    code, printed, _ = run_index(capsys, WINEMAG_RECIPE, built[1][0], f"output_dir={out}")
    assert code == 0 and f"index {out / 'index'} (collection winemag" in printed


def test_a_full_disk_while_writing_the_chunk_memo_is_one_line(tmp_path, capsys, monkeypatch):
    # write_atomic's OSError came out of the command (and of run and evaluate, which build the index) as a traceback.
    import errno

    import toolkit.report

    real = os.fdopen

    def full(fd, *args, **kwargs):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".winemag.chunks.json."):
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(toolkit.report.os, "fdopen", full)
    out = tmp_path / "out"
    code, _, err = run_index(capsys, "recipes/winemag.yaml", f"data.corpus.0.path={write_csv(tmp_path / 'r.csv')}",
                             f"output_dir={out}")
    assert code == 2
    assert f"error: cannot write the chunk memo {out / 'index' / 'winemag.chunks.json'}: No space left on device" \
        in " ".join(err.split()), err
    assert not list((out / "index").glob(".winemag.chunks.json.*"))  # no temp file left
