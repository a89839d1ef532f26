"""Reading the user's files: corpus documents and question/answer sets.

Bad input fails with one line naming the file and line, before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    source: str = ""


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _string(obj: dict, key: str, where: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return value


def load_documents(paths: list[Path]) -> list[Document]:
    """Documents from .jsonl ({id, text, title?} per line) and .md/.txt (a document per file) files."""
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            for lineno, obj in read_jsonl(path):
                where = f"{path}:{lineno}"
                doc = Document(
                    _string(obj, "id", where), _string(obj, "text", where), _string(obj, "title", where, False)
                )
                if doc.id in seen:
                    raise DataError(f"{where}: duplicate document id {doc.id!r} (first in {seen[doc.id]})")
                seen[doc.id] = where
                docs.append(doc)
        elif suffix in (".md", ".txt"):
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise DataError(f"{path}: empty document")
            if path.stem in seen:
                raise DataError(f"{path}: duplicate document id {path.stem!r} (first in {seen[path.stem]})")
            seen[path.stem] = str(path)
            docs.append(Document(path.stem, text, path.stem))
        else:
            raise DataError(f"{path}: unsupported corpus file type {path.suffix!r} (use .jsonl, .md or .txt)")
    if not docs:
        raise DataError(f"no documents in {', '.join(map(str, paths))}")
    return docs


def load_qa(path: Path) -> list[QA]:
    """Question/answer rows; `aliases` (list of strings) and `source` (a document id) are optional."""
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        aliases = obj.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataError(f"{where}: 'aliases' must be a list of strings")
        rows.append(QA(_string(obj, "question", where), _string(obj, "answer", where), aliases,
                       _string(obj, "source", where, required=False)))
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows
