"""The retrieval index: chunk documents by embedder tokens, embed them, keep them in a persistent Chroma collection.

Chroma always receives precomputed embeddings (adds and queries): without them it falls back to its own ONNX
embedder, which downloads a model. Chunk ids are `doc id:position:content hash`, so syncing an unchanged corpus
embeds nothing, and a changed chunk gets a new id (old one deleted).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.data import Document

logger = logging.getLogger(__name__)

EMBED_BATCH = 32  # measured: 16–32 is fastest for MiniLM on CPU; bigger batches pad more


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    source: str  # document id
    position: int


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    source: str
    score: float  # cosine similarity


@dataclass(frozen=True)
class SyncCounts:
    added: int
    deleted: int
    unchanged: int


def chunk_documents(docs: list[Document], tokenizer, size: int, overlap: int) -> list[Chunk]:
    """Windows of at most `size` embedder tokens, sharing about `overlap` tokens with the previous window.

    Windows start and end on whole words (a word longer than `size` tokens stands alone), so no chunk begins
    inside a word and re-tokenizing a chunk gives the token count it was cut by.
    """
    chunks = []
    for doc in docs:
        for position, (start, end) in enumerate(_word_windows(doc.text, tokenizer, size, overlap)):
            text = doc.text[start:end]
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            chunks.append(Chunk(f"{doc.id}:{position}:{digest}", text, doc.id, position))
    return chunks


def _word_windows(text: str, tokenizer, size: int, overlap: int) -> list[tuple[int, int]]:
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if not words:
        return []
    # Tokens per word: each token belongs to the word its first character is in.
    counts = [0] * len(words)
    word_starts = [start for start, _ in words]
    for tok_start, tok_end in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]:
        if tok_end > tok_start:
            counts[max(bisect.bisect_right(word_starts, tok_start) - 1, 0)] += 1
    windows, first = [], 0
    while True:
        last, tokens = first, 0
        while last < len(words) and (last == first or tokens + counts[last] <= size):
            tokens += counts[last]
            last += 1
        windows.append((words[first][0], words[last - 1][1]))
        if last == len(words):
            return windows
        # Step back from the end by whole words until about `overlap` tokens are shared, always moving forward.
        nxt, shared = last, 0
        while nxt - 1 > first and shared + counts[nxt - 1] <= overlap:
            nxt -= 1
            shared += counts[nxt]
        first = nxt


class Index:
    """A Chroma collection plus the sentence-transformer that embeds both chunks and queries."""

    def __init__(self, path: Path, collection: str, embedder_name: str, embedder_path: str):
        import chromadb
        from chromadb.config import Settings
        from sentence_transformers import SentenceTransformer

        self.embedder = SentenceTransformer(embedder_path, device="cpu")
        path.mkdir(parents=True, exist_ok=True)
        # Telemetry off: it would try to reach the network on every client start.
        self.client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
        manifest = {"embedder": embedder_name, "dimension": self.embedder.get_embedding_dimension()}
        existing = next((c for c in self.client.list_collections() if c.name == collection), None)
        if existing is not None and dict(existing.metadata or {}) != manifest:
            logger.warning("index %s was built with %s; rebuilding it for %s", path, existing.metadata, manifest)
            self.client.delete_collection(collection)
        self.collection = self.client.get_or_create_collection(
            collection, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None, metadata=manifest
        )

    def embed(self, texts: list[str]):
        return self.embedder.encode(
            texts, batch_size=EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def sync(self, chunks: list[Chunk]) -> SyncCounts:
        """Make the collection hold exactly `chunks`: embed only the new ones, delete the stale ones."""
        have = set(self.collection.get(include=[])["ids"])
        want = {c.id: c for c in chunks}
        stale = sorted(have - want.keys())
        new = [c for c in chunks if c.id not in have]
        if stale:
            self.collection.delete(ids=stale)
        for start in range(0, len(new), 1024):
            batch = new[start : start + 1024]
            self.collection.add(
                ids=[c.id for c in batch],
                embeddings=self.embed([c.text for c in batch]),
                documents=[c.text for c in batch],
                metadatas=[{"source": c.source, "position": c.position} for c in batch],
            )
        return SyncCounts(added=len(new), deleted=len(stale), unchanged=len(want) - len(new))

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        result = self.collection.query(
            query_embeddings=self.embed(queries), n_results=k, include=["documents", "metadatas", "distances"]
        )
        columns = (result["ids"], result["documents"], result["metadatas"], result["distances"])
        return [
            [Hit(*hit[:2], hit[2]["source"], 1.0 - hit[3]) for hit in zip(*per_query, strict=True)]
            for per_query in zip(*columns, strict=True)
        ]


def build_index(recipe, docs: list[Document]) -> tuple[Index, SyncCounts]:
    """Open (or create) the recipe's index under its output folder and sync it with the corpus."""
    from toolkit.models import resolve_embedder

    cfg = recipe.retrieval
    index = Index(recipe.output_dir / "index", cfg.collection, cfg.embedder, resolve_embedder(cfg.embedder))
    chunks = chunk_documents(docs, index.embedder.tokenizer, cfg.chunk_size, cfg.chunk_overlap)
    counts = index.sync(chunks)
    logger.info("index: %d chunks (%d added, %d deleted, %d unchanged)", len(chunks), *vars(counts).values())
    return index, counts
