"""Question/answer sets: read from .jsonl files, or generated from CSV rows by templates.

Generated questions are deterministic: the same rows, templates and seed always give the same questions, split and
order. The split is by row (all questions of a row land on one side), and each question's `source` is the id of its
row's document, so retrieval recall can be measured against the index.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.loaders import DataError, Row, check_text, read_jsonl, render, string_field, template_fields

logger = logging.getLogger(__name__)
QA_KEYS = ("question", "answer", "aliases", "source")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    source: str = ""  # id of the document that answers it


def folded(text: str) -> str:
    """`text` as the question checks compare it: lowercased, each run of whitespace one space, and in NFC form:
    "à" typed as one character or as "a" and a combining accent (as macOS file names and some exports spell it)
    is one letter to a reader and to the model's tokenizer."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def load_qa(path: Path) -> list[QA]:
    """Question/answer rows; `aliases` (list of strings) and `source` (a document id) are optional."""
    rows = []
    unread: dict[str, tuple[int, int, bool]] = {}  # key -> (first line, lines, misspelt), in the file's order
    resembled: dict[str, str | None] = {}  # key -> the read key it is close to, if any
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in (key for key in obj if key not in QA_KEYS):
            if key not in resembled:
                resembled[key] = next(iter(difflib.get_close_matches(key, QA_KEYS, n=1)), None)
            first, count, misspelt = unread.get(key, (lineno, 0, False))
            # Only where the line lacks the key it resembles: "question_id" beside "question" is a column of its own.
            close = resembled[key]
            unread[key] = (first, count + 1, misspelt or (close is not None and close not in obj))
        aliases = obj.get("aliases")
        if aliases is None:  # null means none, as for `source`: pandas' to_json writes a missing value as null
            aliases = []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataError(f"{where}: 'aliases' must be a list of strings")
        for alias in aliases:
            check_text(alias, "an 'aliases' entry", where)
        rows.append(QA(string_field(obj, "question", where), string_field(obj, "answer", where), aliases,
                       string_field(obj, "source", where, required=False)))
    if not rows:
        raise DataError(f"{path}: no questions")
    _warn_unread(path, unread, resembled)
    return rows


def _warn_unread(path: Path, unread: dict[str, tuple[int, int, bool]], resembled: dict[str, str | None]) -> None:
    """Keys a question file has that are not read. Another tool's extra columns are fine, but a misspelt key
    ("sources", "alias") silently left every question without its source document or aliases."""
    for key, (first, count, misspelt) in unread.items():
        hint = f"did you mean {resembled[key]!r}?" if misspelt else f"the keys read are {', '.join(QA_KEYS)}"
        logger.warning("%s:%d: key %r is not read (%d line%s; %s)", path, first, key, count,
                       "" if count == 1 else "s", hint)


def question_columns(templates) -> list[str]:
    """Every column the templates read: the question placeholders and the answer columns."""
    names = [name for t in templates for name in (*template_fields(t.question), t.answer)]
    return list(dict.fromkeys(names))


def row_questions(rows: list[Row], templates, eval_fraction: float, seed: int) -> tuple[list[QA], list[QA]]:
    """(train, eval) questions from `rows`, one per template and row.

    `templates` are items with `question` (a `{column}` template) and `answer` (a column name). A row gets no
    question from a template whose answer or placeholders are blank in it. A question that several rows would
    produce (two reviews of the same wine: a duplicate title, also one differing only in case, spacing or how an
    accent is encoded) is dropped for all of them: its source is ambiguous, and its copies could land on both sides
    of the split. Rows are ranked by a hash of the seed and the row's document id; the first `eval_fraction` of the
    rows that have questions are held out. Questions come ordered by that rank, so taking the first N is a random
    sample that does not depend on file order (given ids from an id column: row numbers move with the rows).
    """
    # Keyed as the eval reads a question (case, spacing and accent encoding aside): "Nicosia 2013  Red" and
    # "Nicosia 2013 Red" are one question, and two rows asking it are ambiguous.
    by_question: dict[str, list[tuple[Row, str, str]]] = defaultdict(list)
    for row in rows:
        for template in templates:
            answer = row.values[template.answer].strip()
            if not answer or not all(row.values[name].strip() for name in template_fields(template.question)):
                continue
            question = render(template.question, row.values)
            by_question[folded(question)].append((row, question, answer))
    per_row: dict[str, list[QA]] = defaultdict(list)
    for found in by_question.values():
        if len({row.doc_id for row, _, _ in found}) == 1:
            row, question, answer = found[0]
            per_row[row.doc_id].append(QA(question, answer, [], row.doc_id))
    if not per_row:
        return [], []
    ranked = sorted(per_row, key=lambda doc_id: _rank(seed, doc_id))
    n_eval = min(max(round(eval_fraction * len(ranked)), 1), len(ranked) - 1) if len(ranked) > 1 else 0
    # Within a row, questions are in template order (the order they were generated in).
    train = [qa for doc_id in ranked[n_eval:] for qa in per_row[doc_id]]
    held_out = [qa for doc_id in ranked[:n_eval] for qa in per_row[doc_id]]
    return train, held_out


def _rank(seed: int, doc_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{doc_id}".encode()).hexdigest()

