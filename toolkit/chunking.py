"""Chunking: documents cut into windows of embedder tokens, with ids that depend only on their content.

A chunk id is `doc id:position:hash`, the hash covering the chunk's text and its document's metadata: the same
input always gives the same ids, and an edit changes only the ids of the chunks it touches.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import re
import unicodedata
from dataclasses import dataclass, field

from toolkit.loaders import DataError, Document
from toolkit.models import ModelError

# Part of every document hash: bump it when chunk_documents changes, so memoized chunk ids are not reused.
# 4: a word longer than a chunk is cut between its tokens. Ordinary text chunks as in 3, so its chunk ids (and the
# stored embeddings) stay; but without the bump an index would keep a long-word document's one over-long chunk.
CHUNKER_VERSION = 4


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    source: str  # document id
    position: int
    tokens: int = field(default=0, compare=False)  # embedder tokens in the chunk
    metadata: dict = field(default_factory=dict, compare=False)  # the document's, stored with the chunk


def chunk_documents(docs: list[Document], tokenizer, size: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `size` embedder tokens, cut on whole words.

    Paragraphs (separated by a blank line) are packed into a chunk while they fit; a paragraph longer than `size`
    is cut into windows that share about `overlap` tokens, the first of which also takes the short paragraphs
    before it (a heading is never left alone). A word longer than `size` tokens (a run of text with no space: a
    URL, base64, Chinese or Japanese) is cut between its tokens, as if each were a word; the cuts never fall inside
    a character, and the chunks are still slices of the document's text.
    """
    chunks = []
    encode = _encoder(tokenizer)
    for start in range(0, len(docs), 256):  # one tokenizer call per group: the fast tokenizer batches in Rust
        group = docs[start : start + 256]
        for doc, (count, offsets) in zip(group, encode([doc.text for doc in group]), strict=True):
            for position, (begin, end, tokens) in enumerate(_windows(doc.text, count, offsets, size, overlap)):
                text = doc.text[begin:end]
                chunk_id = f"{doc.id}:{position}:{_content_hash(text, doc.metadata)}"
                chunks.append(Chunk(chunk_id, text, doc.id, position, tokens, doc.metadata))
    return chunks


def _encoder(tokenizer):
    """texts -> (token count, a function giving the tokens' character offsets) per text; no special tokens.

    A fast tokenizer's Rust backend is called directly: the offsets of most documents (those that fit one chunk)
    are then never turned into Python lists. It is a copy, so that its truncation and padding can be turned off
    (MiniLM's tokenizer.json truncates and pads to 128) without touching the embedder's own tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a pure-Python tokenizer: transformers 5 gives such tokenizers no character offsets
        raise ModelError(
            f"retrieval.embedder: its tokenizer ({type(tokenizer).__name__}) has no fast (Rust) backend, and "
            "chunking needs the tokens' character offsets; pick a sentence-transformers model with a tokenizer.json"
        )
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_truncation()
    own.no_padding()
    return lambda texts: [(len(e), lambda e=e: e.offsets) for e in own.encode_batch(texts, add_special_tokens=False)]


def _content_hash(text: str, metadata: dict) -> str:
    content = text if not metadata else text + "\0" + json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def document_hash(doc: Document, size: int, overlap: int, embedder: str) -> str:
    """Everything the chunks of `doc` depend on: its id, text and metadata, the chunker and its settings."""
    key = [CHUNKER_VERSION, embedder, size, overlap, doc.id, doc.text, doc.metadata]
    try:
        return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]
    except UnicodeEncodeError:
        # The loaders refuse these; a Document built in Python may still hold one, and it must not get as far as
        # the tokenizer or Chroma, whose errors would not say which document it was.
        raise DataError(
            f"document {doc.id!r}: its id, text or metadata holds a lone surrogate, which is not valid Unicode text"
        ) from None


def _windows(text: str, count: int, offsets, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of each chunk of `text`, given its token count and a function giving their offsets."""
    if not text.strip():
        return []
    if count <= size:  # the whole text: from its first to its last non-space character
        return [(len(text) - len(text.lstrip()), len(text.rstrip()), count)]
    words = [m.span() for m in re.finditer(r"\S+", text)]
    real = [(s, e) for s, e in offsets() if e > s]
    # Tokens per word: each token belongs to the word its first character is in.
    counts = [0] * len(words)
    word_starts = [start for start, _ in words]
    owners = [max(bisect.bisect_right(word_starts, tok_start) - 1, 0) for tok_start, _ in real]
    for owner in owners:
        counts[owner] += 1
    if max(counts) > size:
        words, counts = _split_long_words(text, words, counts, [s for s, _ in real], owners, size)
    # Paragraphs: runs of words with no blank line between them.
    breaks = [i for i in range(1, len(words)) if text.count("\n", words[i - 1][1], words[i][0]) >= 2]
    paragraphs = list(zip([0, *breaks], [*breaks, len(words)], strict=True))

    windows: list[tuple[int, int, int]] = []  # (first word, end word, tokens)
    group: tuple[int, int, int] | None = None  # paragraphs packed so far
    for first, end in paragraphs:
        tokens = sum(counts[first:end])
        if tokens > size:
            windows += _word_windows(counts, group[0] if group else first, end, size, overlap)
            group = None
        elif group and group[2] + tokens <= size:
            group = (group[0], end, group[2] + tokens)
        else:
            if group:
                windows.append(group)
            group = (first, end, tokens)
    if group:
        windows.append(group)
    return [(words[first][0], words[end - 1][1], tokens) for first, end, tokens in windows]


def _split_long_words(
    text: str, words: list[tuple[int, int]], counts: list[int], starts: list[int], owners: list[int], size: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """`words` and their token counts, each word of more than `size` tokens cut into pieces of one token.

    `starts` are the tokens' first characters and `owners` the words they belong to. A piece starts where a token
    does, but never before a combining mark or inside a sequence joined by U+200D (ZWJ), and tokens that start on
    the same character (a byte-level BPE's pieces of one character) stay together.
    """
    cuts: dict[int, list[int]] = {}
    for start, owner in zip(starts, owners, strict=True):
        if counts[owner] > size:
            cuts.setdefault(owner, []).append(start)
    pieces, piece_counts = [], []
    for i, (begin, end) in enumerate(words):
        if i not in cuts:
            pieces.append((begin, end))
            piece_counts.append(counts[i])
            continue
        bounds = [begin, *sorted({s for s in cuts[i] if begin < s < end and _may_cut(text, s)}), end]
        tokens = [0] * (len(bounds) - 1)
        for start in cuts[i]:  # a token that starts past the word's end (in the space after it) joins its last piece
            tokens[min(max(bisect.bisect_right(bounds, start) - 1, 0), len(tokens) - 1)] += 1
        pieces += itertools.pairwise(bounds)
        piece_counts += tokens
    return pieces, piece_counts


def _may_cut(text: str, at: int) -> bool:
    """Whether `text` may be cut before `at` without splitting a character as a reader sees it: not before a
    combining mark, a Hangul vowel or final jamo (a syllable spelled in conjoining jamo) or a skin-tone modifier,
    nor next to a zero-width joiner."""
    char = text[at]
    return not (unicodedata.category(char).startswith("M") or "\u1160" <= char <= "\u11ff"
                or "\ud7b0" <= char <= "\ud7ff" or "\U0001f3fb" <= char <= "\U0001f3ff"
                or "\u200d" in text[at - 1 : at + 1])


def _word_windows(counts: list[int], first: int, stop: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    windows = []
    while True:
        last, tokens = first, 0
        while last < stop and (last == first or tokens + counts[last] <= size):
            tokens += counts[last]
            last += 1
        windows.append((first, last, tokens))
        if last == stop:
            return windows
        # Step back from the end by whole words until about `overlap` tokens are shared, always moving forward.
        # The next window must reach past this one's end: with a long word next, stepping back the whole overlap
        # would leave room for nothing new, and the window would repeat this one's tail.
        nxt, shared, room = last, 0, min(overlap, size - counts[last])
        while nxt - 1 > first and shared + counts[nxt - 1] <= room:
            nxt -= 1
            shared += counts[nxt]
        first = nxt
