"""Tests for toolkit.chunking: windows of embedder tokens on whole words and paragraphs, content-addressed ids."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from toolkit.chunking import Chunk, _windows, chunk_documents
from toolkit.data import Document, load_documents
from toolkit.models import resolve_embedder

WINE = Path(__file__).resolve().parents[1] / "data" / "wine"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_embedder("packaged:all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def long_doc() -> Document:
    words = " ".join(doc.text for doc in load_documents([WINE / "docs.jsonl"])).split()
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


def test_a_long_word_after_the_overlap_does_not_repeat_the_last_window(tokenizer):
    # Before "zq-zq-...", too long to share a window with the overlap, the next window starts at the long word
    # itself; stepping back would give windows that hold only words already chunked ("w8 w9", "w9").
    long_word = "-".join(["zq"] * 5 + ["z"])
    assert n_tokens(tokenizer, long_word) == 16  # it fits a window, but not beside the 4 tokens of overlap
    doc = Document("d", " ".join(f"w{i}" for i in range(10)) + " " + long_word)
    chunks = chunk_documents([doc], tokenizer, 16, 4)
    covered = [spans(doc, chunks)[0]]
    for start, end in spans(doc, chunks)[1:]:
        assert end > covered[-1][1], "a window that adds nothing new"
        covered.append((start, end))
    assert chunks[-1].text.startswith("zq-") and len(chunks) == 3


def test_a_tokenizer_without_offsets_is_a_clear_error():
    from transformers import PreTrainedTokenizer

    from toolkit.models import ModelError

    class Slow(PreTrainedTokenizer):  # pure Python, as transformers 5 builds tokenizers with no tokenizer.json
        def __init__(self):
            pass

    with pytest.raises(ModelError, match=r"^retrieval\.embedder: its tokenizer \(Slow\) has no fast"):
        chunk_documents([Document("d", "Barolo is made from Nebbiolo.")], Slow(), 64, 16)


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


def test_paragraphs_are_packed_while_they_fit(tokenizer):
    paragraphs = ["Barolo is made from Nebbiolo.", "Rioja is mostly Tempranillo.", "Sancerre is Sauvignon Blanc."]
    doc = Document("notes", "\n\n".join(paragraphs))
    [whole] = chunk_documents([doc], tokenizer, 64, 8)
    assert whole.text == doc.text
    # Too small for all three: cut between paragraphs, never inside one, and no overlap across the cut.
    two = n_tokens(tokenizer, paragraphs[0]) + n_tokens(tokenizer, paragraphs[1])
    assert [c.text for c in chunk_documents([doc], tokenizer, two, 4)] == ["\n\n".join(paragraphs[:2]), paragraphs[2]]


def test_a_long_paragraph_takes_the_heading_before_it(tokenizer, long_doc):
    doc = Document("notes", "## Tasting notes\n\n" + long_doc.text + "\n\nThe end.")
    chunks = chunk_documents([doc], tokenizer, 64, 16)
    assert chunks[0].text.startswith("## Tasting notes\n\n" + long_doc.text[:20])
    assert chunks[-1].text == "The end."
    assert all(c.tokens <= 64 for c in chunks)
    assert [c.tokens for c in chunks] == [n_tokens(tokenizer, c.text) for c in chunks]


def test_metadata_is_part_of_the_chunk_id(tokenizer):
    text = "Barolo is made from Nebbiolo."
    plain, italian, priced = chunk_documents(
        [Document("a", text), Document("b", text, "", {"country": "Italy"}), Document("c", text, "", {"price": 40})],
        tokenizer, 64, 8,
    )
    hashes = {chunk.id.rsplit(":", 1)[1] for chunk in (plain, italian, priced)}
    assert len(hashes) == 3
    assert italian.metadata == {"country": "Italy"}


def test_document_hash_of_a_lone_surrogate_is_a_data_error():
    # The loaders refuse these; a Document built in Python gets a one-line error naming it, not a UnicodeEncodeError.
    from toolkit.chunking import document_hash
    from toolkit.data import DataError

    with pytest.raises(DataError, match=r"^document 'bad': .* lone surrogate"):
        document_hash(Document("bad", "caf\ud800"), 128, 16, "e")


# ------------------------------------------------------------------------------------------- words longer than a chunk


def doc_tokens(tokenizer, doc: Document, start: int, end: int) -> int:
    """How many of the document's own embedder tokens lie in text[start:end]."""
    offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(start <= s and e <= end for s, e in offsets if e > s)


def test_text_without_spaces_is_cut_into_windows_of_at_most_size_tokens(tokenizer):
    # Chinese has no spaces: the whole document is one "word", and it was one chunk of 1140 tokens, of which the
    # embedder (MiniLM reads 256) never saw most. Each Chinese character is one MiniLM token.
    # (The characters are shuffled, so that each chunk's text is found only where it was cut.)
    doc = Document("zh", "".join(random.Random(0).choices("葡萄酒是一种由发酵葡萄制成的酒精饮料。", k=1140)))
    assert n_tokens(tokenizer, doc.text) == len(doc.text) == 1140
    chunks = chunk_documents([doc], tokenizer, 128, 16)
    where = spans(doc, chunks)
    assert [start for start, _ in where] == [112 * i for i in range(11)]  # each window shares 16 tokens with the last
    assert [end - start for start, end in where] == [128] * 10 + [1140 - 10 * 112]
    assert all(c.text == doc.text[start:end] for c, (start, end) in zip(chunks, where, strict=True))
    assert [c.tokens for c in chunks] == [n_tokens(tokenizer, c.text) for c in chunks]


def test_a_long_word_among_words_is_cut_on_its_token_boundaries(tokenizer):
    # A 5000-character base64 blob (or a long URL) in ordinary text: windows of at most `size` of the document's
    # tokens, cut where one of its tokens starts, overlapping, together covering the whole text.
    blob = "".join(random.Random(0).choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", k=5000))
    doc = Document("d", "## Attachment\n\nThe file below is the label, base64 encoded: " + blob + " End of file.")
    chunks = chunk_documents([doc], tokenizer, 128, 16)
    where = spans(doc, chunks)
    assert len(chunks) > 5000 // 4 // 128
    assert where[0][0] == 0 and where[-1][1] == len(doc.text)
    assert chunks[0].text.startswith("## Attachment\n\nThe file below")  # the heading stays with what follows it
    assert chunks[-1].text.endswith(" End of file.")
    offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cuts = {s for s, e in offsets if e > s} | {e for s, e in offsets if e > s}
    for chunk, (start, end) in zip(chunks, where, strict=True):
        assert start in cuts and end in cuts
        assert chunk.tokens == doc_tokens(tokenizer, doc, start, end) <= 128
    for (start_a, end_a), (start_b, end_b) in itertools.pairwise(where):
        assert start_a < start_b < end_a < end_b
        assert doc_tokens(tokenizer, doc, start_b, end_a) in range(8, 17)  # about `overlap` tokens shared


def test_a_long_word_is_never_cut_inside_a_character():
    # Offsets as other tokenizers give them: a token per code point, so one may start on a combining accent or
    # either side of a zero-width joiner; and a byte-level BPE's two tokens of one emoji, both on that character.
    text = ("Cafe\u0301" + "\U0001F468\u200d\U0001F469" + "\U0001F600") * 40
    offsets = [(i, i + 1) for i in range(len(text))]
    offsets = [span for span in offsets for _ in range(2 if text[span[0]] == "\U0001F600" else 1)]
    windows = _windows(text, len(offsets), lambda: offsets, 16, 4)
    assert len(windows) > 1 and windows[0][0] == 0 and windows[-1][1] == len(text)
    for start, end, tokens in windows:
        assert tokens <= 16
        for cut in (start, end):
            assert cut in (0, len(text)) or not (text[cut] in "\u0301\u200d" or text[cut - 1] == "\u200d"), cut
    assert all(tokens == sum(start <= s < end for s, _ in offsets) for start, end, tokens in windows)


def test_a_long_word_is_never_cut_inside_a_hangul_syllable_or_before_a_skin_tone():
    # A syllable spelled in conjoining jamo (lead, vowel, final) and a hand with its skin tone are one character to
    # a reader: a token per code point must not cut them.
    text = ("\u1112\u1161\u11ab" + "\U0001F44B\U0001F3FD") * 40
    offsets = [(i, i + 1) for i in range(len(text))]
    windows = _windows(text, len(offsets), lambda: offsets, 16, 4)
    assert len(windows) > 1
    for start, end, _ in windows:
        for cut in (start, end):
            assert cut in (0, len(text)) or text[cut] in "\u1112\U0001F44B", (cut, hex(ord(text[cut])))


def test_the_wine_corpus_chunks_as_it_always_has(tokenizer):
    # The fix for long words changes no chunk of ordinary text: these are the ids of data/wine's chunks before it
    # (its longest word is 8 tokens), so the chunk ids (content hashes) of an existing index stay valid.
    docs = load_documents([WINE / "docs.jsonl"])
    expected = {(128, 16): (52, "6457e286e0e00b18"), (64, 16): (104, "e1c91e15cb4b6006"),
                (32, 8): (203, "7d2a5dc89f3bb6a5"), (16, 4): (401, "a15df45b91e962a7")}
    for (size, overlap), (count, digest) in expected.items():
        ids = [chunk.id for chunk in chunk_documents(docs, tokenizer, size, overlap)]
        assert (len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]) == (count, digest), size
