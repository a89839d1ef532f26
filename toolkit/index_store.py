"""The index's store: a persistent Chroma collection of embedded document chunks, and the embedder that fills it.

- Chunks come from `toolkit.chunking`; their ids depend only on their content, so syncing embeds exactly the
  chunks whose ids the collection lacks and deletes those no document gives any more.
- Chroma always receives precomputed embeddings (adds and queries): without them it falls back to its own ONNX
  embedder, which downloads a model. The collection uses cosine distance.
- The collection's metadata is the manifest: the embedder's name and dimension, the chunking (`chunk_size`,
  `chunk_overlap`) and `complete`, false while a sync is writing. Opening it for another embedder rebuilds it, and
  says so; reading one that is incomplete or chunked otherwise is an error.
- New chunks are embedded and written in batches of `write_batch_size`, longest first (as one big `encode` call
  would order them), each batch one Chroma write: a process killed mid-index keeps every finished batch, and the
  next run embeds only what is missing.
- Unchanged runs embed and tokenize nothing: `<collection>.chunks.json` beside the collection memoizes, per
  document content hash, the chunk ids the chunker gave it (a pure function of that hash, so the file can never be
  wrong, only missing); a document whose chunk ids are all in the collection is skipped.

A recipe's index (its folder, collection and embedder) is opened and built by `toolkit.index`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.chunking import CHUNKER_VERSION, Chunk, chunk_documents, document_hash
from toolkit.data import DataError, Document
from toolkit.loaders import metadata_key_problem
from toolkit.report import file_in_the_way, write_atomic

logger = logging.getLogger(__name__)

_DELETE_BATCH = 4096  # under Chroma's maximum batch size (5461 with SQLite)


class IndexUnavailable(DataError):
    """The index cannot be used as asked (missing, built for another embedder, ...); the message is one line."""


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    source: str
    score: float  # cosine similarity
    metadata: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SyncCounts:
    """Chunks, by `doc id:position`: new ones, changed ones (re-embedded), gone ones, and ones kept as they were."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


def _key(chunk_id: str) -> str:
    """`doc id:position` of a chunk id: a chunk with the same key and another hash is an update."""
    return chunk_id.rsplit(":", 1)[0]


# ------------------------------------------------------------------------------------------------- index


@functools.lru_cache(maxsize=2)
def _load_embedder(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


class Index:
    """A Chroma collection plus the sentence-transformer that embeds both chunks and queries.

    `create=False` opens an existing index read-only in spirit (for search): a missing index or one built with
    another embedder is an error instead of a (re)build. The embedder loads on first use, so an unchanged update
    never loads it.
    """

    def __init__(
        self,
        path: Path,
        collection: str,
        embedder_name: str,
        embedder_path: str,
        *,
        embed_batch_size: int = 32,
        write_batch_size: int = 1024,
        create: bool = True,
    ):
        import chromadb
        from chromadb.config import Settings

        self.path, self.name = Path(path), collection
        self.embedder_name, self.embedder_path = embedder_name, embedder_path
        self.embed_batch_size, self.write_batch_size = embed_batch_size, write_batch_size
        self._embedder = None
        _check_folder(self.path)
        if not create and not (self.path / "chroma.sqlite3").is_file():
            raise IndexUnavailable(f"no index at {self.path}")
        if create and not (self.path / "chroma.sqlite3").exists():
            # A new index needs the embedder (for its dimension) anyway: loading it before anything is written
            # means an embedder that fails to load leaves no empty index behind.
            self.embedder  # noqa: B018
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise IndexUnavailable(f"cannot create the index folder {self.path}: {err.strerror or err}") from None
        with _readable(self.path):
            # Telemetry off: it would try to reach the network on every client start.
            self.client = chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))
            existing = next((c for c in self.client.list_collections() if c.name == collection), None)
        built_with = (existing.metadata or {}).get("embedder") if existing is not None else None
        from toolkit.models import folder_fingerprint

        files = folder_fingerprint(embedder_path)
        built_files = (existing.metadata or {}).get("embedder_files") if existing is not None else None
        # Same name, other weights (retrained in place): every stored vector is from the old model. An index made
        # before fingerprints were kept has none to compare and is used as it is.
        refit = built_with == embedder_name and None not in (files, built_files) and files != built_files
        if not create:
            if existing is None:
                raise IndexUnavailable(f"no collection {collection!r} in the index at {self.path}")
            if built_with != embedder_name:
                raise IndexUnavailable(
                    f"the index at {self.path} was built with embedder {built_with!r}, not {embedder_name!r}"
                )
            if refit:
                raise IndexUnavailable(f"the index at {self.path} was built with other files of embedder "
                                       f"{embedder_name!r} (retrained or replaced in place since)")
            with _readable(self.path):
                empty = existing.count() == 0
            if empty:  # a first build that failed or was stopped before its first batch was stored
                # The readers (search, chat) add the command that builds it, with their recipe and overrides.
                raise IndexUnavailable(f"the index at {self.path} holds no chunks (its first build failed or was "
                                       "stopped)")
            # Only some of the corpus's chunks, or a mix of old and new ones: answers would silently miss documents.
            if (existing.metadata or {}).get("complete") is False:
                raise IndexUnavailable(f"the index at {self.path} is incomplete (its last build failed or was "
                                       "stopped)")
        elif existing is not None and (built_with != embedder_name or refit):
            self.embedder  # noqa: B018 -- load the new embedder first: if it fails, the old index stays
            if refit:
                logger.warning("index %s (collection %s) was built with other files of embedder %r (retrained or "
                               "replaced in place since); rebuilding it", self.path, collection, embedder_name)
            else:
                logger.warning("index %s (collection %s) was built with embedder %r; rebuilding it for %r",
                               self.path, collection, built_with, embedder_name)
            self.client.delete_collection(collection)
            existing = None
        if existing is None:
            manifest = {"embedder": embedder_name, "dimension": self.embedder.get_embedding_dimension()}
            if files is not None:
                manifest["embedder_files"] = files
            existing = self.client.create_collection(
                collection, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None, metadata=manifest
            )
        self.collection = existing

    @property
    def manifest(self) -> dict:
        return dict(self.collection.metadata or {})

    def _record(self, **fields) -> None:
        """Change these manifest fields; Chroma replaces a collection's metadata whole, so the rest is passed on."""
        with _readable(self.path):
            self.collection.modify(metadata={**self.manifest, **fields})

    @property
    def embedder(self):
        if self._embedder is None:
            from toolkit.models import ModelError

            if not str(self.embedder_path).strip():
                # sentence-transformers would build a model with no modules from it and fail on first use
                raise ModelError(f"cannot load embedder {self.embedder_name!r}: it names no model")
            try:
                embedder = _load_embedder(self.embedder_path)
            except (OSError, ValueError) as err:
                raise ModelError(f"cannot load embedder {self.embedder_name!r}: {err}".splitlines()[0]) from None
            stored = getattr(self, "collection", None) and self.manifest.get("dimension")
            if stored and stored != embedder.get_embedding_dimension():
                raise IndexUnavailable(
                    f"embedder {self.embedder_name!r} now gives {embedder.get_embedding_dimension()}-dimensional "
                    f"vectors, the index at {self.path} holds {stored}: delete that folder to rebuild it"
                )
            self._embedder = embedder
        return self._embedder

    @property
    def tokenizer(self):
        return self.embedder.tokenizer

    def embed(self, texts: list[str]):
        return self.embedder.encode(
            texts, batch_size=self.embed_batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )

    # -------------------------------------------------------------------------------------------- writing

    def update(
        self, docs: list[Document], size: int, overlap: int, progress: Callable[[int, int], None] | None = None
    ) -> SyncCounts:
        """Make the collection hold exactly the chunks of `docs`; documents whose chunks are all stored are
        neither tokenized nor embedded. `progress(done, total)` is called after each stored batch."""
        with _readable(self.path):
            have = set(self.collection.get(include=[])["ids"])
        memo = self._read_memo()
        hashes = [document_hash(doc, size, overlap, self.embedder_name) for doc in docs]
        kept: set[str] = set()
        todo: list[tuple[Document, str]] = []
        chunk_ids: dict[str, list[str]] = {}
        for doc, digest in zip(docs, hashes, strict=True):
            known = memo.get(digest)
            if known is not None and have.issuperset(known):
                kept.update(known)
                chunk_ids[digest] = known
            else:
                todo.append((doc, digest))
        chunks = []
        if todo:
            limit = self.embedder.max_seq_length - 2  # [CLS] and [SEP]
            if size > limit:
                raise IndexUnavailable(
                    f"retrieval.chunk_size {size} is more than embedder {self.embedder_name!r} reads ({limit} "
                    "tokens): the rest of each chunk would be cut off"
                )
            chunks = chunk_documents([doc for doc, _ in todo], self.tokenizer, size, overlap)
            by_source: dict[str, list[str]] = {}
            for chunk in chunks:
                by_source.setdefault(chunk.source, []).append(chunk.id)
            for doc, digest in todo:
                chunk_ids[digest] = by_source.get(doc.id, [])
        counts = self._sync(chunks, have, kept, progress, {"chunk_size": size, "chunk_overlap": overlap})
        if chunk_ids != memo:
            self._write_memo(chunk_ids)
        return counts

    def sync(self, chunks: list[Chunk], progress: Callable[[int, int], None] | None = None) -> SyncCounts:
        """Make the collection hold exactly `chunks`: embed only the new ones, delete the stale ones."""
        with _readable(self.path):
            have = set(self.collection.get(include=[])["ids"])
        return self._sync(chunks, have, set(), progress)

    def _sync(self, chunks: list[Chunk], have: set[str], kept: set[str], progress, chunking=None) -> SyncCounts:
        want = {chunk.id: chunk for chunk in chunks}
        if len(want) != len(chunks):
            raise ValueError("duplicate chunk ids: are two documents sharing an id?")
        wanted = kept | want.keys()
        stale = sorted(have - wanted)
        new = [chunk for chunk in chunks if chunk.id not in have]
        for chunk in new:  # before anything is deleted or written: Chroma would refuse its batch mid-sync
            _check_metadata(chunk)
        have_keys, want_keys = {_key(i) for i in have}, {_key(i) for i in wanted}
        updated = sum(_key(chunk.id) in have_keys for chunk in new)
        counts = SyncCounts(
            added=len(new) - updated,
            updated=updated,
            deleted=sum(_key(i) not in want_keys for i in stale),
            unchanged=len(wanted) - len(new),
        )
        done = {"complete": True, **(chunking or {})}
        if stale or new:  # marked before the first write: a sync killed on the way leaves an index readers refuse
            self._record(complete=False)
        for start in range(0, len(stale), _DELETE_BATCH):
            self.collection.delete(ids=stale[start : start + _DELETE_BATCH])
        # Longest first, as sentence-transformers orders one big encode call: batches of similar lengths pad little.
        new.sort(key=lambda chunk: -chunk.tokens)
        if new:
            logger.info("index: embedding %d new chunks in batches of %d", len(new), self.write_batch_size)
            if progress is not None:
                progress(0, len(new))
        for start in range(0, len(new), self.write_batch_size):
            batch = new[start : start + self.write_batch_size]
            self.collection.add(
                ids=[chunk.id for chunk in batch],
                embeddings=self.embed([chunk.text for chunk in batch]),
                documents=[chunk.text for chunk in batch],
                metadatas=[{**chunk.metadata, "source": chunk.source, "position": chunk.position} for chunk in batch],
            )
            if progress is not None:
                progress(start + len(batch), len(new))
        if any(self.manifest.get(key) != value for key, value in done.items()):
            self._record(**done)
        return counts

    def _memo_path(self) -> Path:
        return self.path / f"{self.name}.chunks.json"

    def _read_memo(self) -> dict[str, list[str]]:
        path = self._memo_path()
        if not path.exists():
            return {}
        try:
            memo = json.loads(path.read_text())
            if memo.get("chunker") != CHUNKER_VERSION:
                return {}
            documents = memo["documents"]
            # Valid JSON of another shape (edited, or written by something else) failed later, with a traceback.
            if not isinstance(documents, dict) or not all(
                    isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in documents.values()):
                raise ValueError("not a mapping of document hashes to chunk ids")
            return documents
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # Chunking everything again is slower, never wrong; said, since it is not what a rerun should do.
            logger.warning("index: ignoring the unreadable chunk memo %s (%s); chunking every document again",
                           path, err)
            return {}

    def _write_memo(self, chunk_ids: dict[str, list[str]]) -> None:
        try:
            write_atomic(self._memo_path(), json.dumps({"chunker": CHUNKER_VERSION, "documents": chunk_ids},
                                                       separators=(",", ":")))
        except OSError as err:  # a full disk: one line, not a traceback; the chunks stored so far are kept
            raise IndexUnavailable(f"cannot write the chunk memo {self._memo_path()}: {err.strerror or err}") \
                from None

    # -------------------------------------------------------------------------------------------- reading

    def count(self) -> int:
        with _readable(self.path):
            return self.collection.count()

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The top-k chunks of each query, best first."""
        if not queries:
            return []
        return self.query(self.embed(queries), k)

    def query(self, embeddings, k: int) -> list[list[Hit]]:
        """`search` with precomputed (normalized) query embeddings."""
        with _readable(self.path):
            # Never more than the collection holds (what Chroma returns anyway): a k past 2**32 (`search -k`) made it
            # raise OverflowError.
            k = max(1, min(k, self.collection.count()))
            result = self.collection.query(
                query_embeddings=embeddings, n_results=k, include=["documents", "metadatas", "distances"]
            )
        columns = (result["ids"], result["documents"], result["metadatas"], result["distances"])
        return [
            [
                Hit(chunk_id, text, meta["source"], 1.0 - distance, meta)
                for chunk_id, text, meta, distance in zip(*per_query, strict=True)
            ]
            for per_query in zip(*columns, strict=True)
        ]


def _check_metadata(chunk: Chunk) -> None:
    """DataError naming the document when the index cannot store its metadata. The loaders refuse such keys with
    the file and line; this guards documents made in code."""
    for key in chunk.metadata:
        if problem := metadata_key_problem(key):
            raise DataError(f"document {chunk.source!r}: metadata key {key!r} {problem}; rename it")


@contextlib.contextmanager
def _readable(path: Path):
    """Chroma's errors on opening or reading the index (a damaged chroma.sqlite3, say) as one line that names the
    folder and the way out. The folder is not deleted here: it may be the only copy of hours of embedding."""
    from chromadb.errors import ChromaError

    try:
        yield
    except ChromaError as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise IndexUnavailable(f"the index at {path} is unreadable ({reason}): delete that folder to rebuild it") \
            from None


def _check_folder(path: Path) -> None:
    """IndexUnavailable when `path`, or a folder it would be created in, is a file."""
    file = file_in_the_way(path)
    if file == path:
        raise IndexUnavailable(
            f"{path} is a file, not a folder: the index needs a folder there (move the file away or set another "
            "output_dir)"
        )
    if file is not None:
        raise IndexUnavailable(f"cannot use {path} as the index folder: {file} is a file, not a folder")
