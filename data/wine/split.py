"""Split the wine QA set into train and eval files, by document.

Reads ``docs.jsonl`` and ``qa.jsonl`` from this directory and writes
``train.jsonl`` and ``eval.jsonl`` next to them.

The split is by document: every question whose ``source`` is a given
document lands on the same side, so eval questions are always about
documents the model never saw questions for during training.

Assignment is deterministic and stratified by document type (the id
prefix: ``grape``, ``region``, ``style``, ``wine``). Within each type the
documents are ranked by the SHA-256 hash of their id, and the first
``round(n * EVAL_FRACTION)`` (at least one) go to eval, the rest to train.
This gives roughly 75% / 25% overall and guarantees that every document
type appears in eval. Python's built-in ``hash()`` is not used because it
is salted per process.

Output rows are the qa rows unchanged, sorted by (source, question).

Usage::

    python data/wine/split.py
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

EVAL_FRACTION = 0.25
HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def doc_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def eval_doc_ids(doc_ids: list[str], fraction: float = EVAL_FRACTION) -> set[str]:
    """Pick the eval documents: per type, the lowest-hash ``fraction`` (>= 1)."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for doc_id in doc_ids:
        by_type[doc_id.split("-", 1)[0]].append(doc_id)
    chosen: set[str] = set()
    for ids in by_type.values():
        n_eval = max(1, math.floor(len(ids) * fraction + 0.5))
        chosen.update(sorted(ids, key=doc_hash)[:n_eval])
    return chosen


def split(data_dir: Path = HERE, out_dir: Path | None = None) -> tuple[int, int]:
    """Write train.jsonl and eval.jsonl into ``out_dir`` (default: ``data_dir``).

    Returns the number of (train, eval) rows written.
    """
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else data_dir
    docs = read_jsonl(data_dir / "docs.jsonl")
    qa = read_jsonl(data_dir / "qa.jsonl")

    eval_ids = eval_doc_ids([d["id"] for d in docs])
    key = lambda row: (row["source"], row["question"])  # noqa: E731
    train = sorted((r for r in qa if r["source"] not in eval_ids), key=key)
    evals = sorted((r for r in qa if r["source"] in eval_ids), key=key)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", evals)
    return len(train), len(evals)


if __name__ == "__main__":
    n_train, n_eval = split()
    print(f"train: {n_train} rows, eval: {n_eval} rows")
