"""Reading the user's data: the corpus a recipe names, and its train/eval question sets.

The formats live in `toolkit.loaders` (files, folders, globs), `toolkit.formats` (.md/.txt/.jsonl/.csv) and
`toolkit.questions` (question files, questions generated from CSV rows). Bad input fails with one line naming the
file and line, before any model is loaded or the index is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.formats import heading_path, load_file
from toolkit.loaders import DataError, Document, Row, expand, read_jsonl
from toolkit.questions import QA, folded, load_qa, question_columns, row_questions

if TYPE_CHECKING:
    from toolkit.recipe import CorpusSource, DataSection

__all__ = ["QA", "DataError", "Dataset", "Document", "load_dataset", "load_documents", "load_qa", "read_jsonl"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    documents: list[Document]
    train: list[QA]
    eval: list[QA]


def load_documents(sources: list[CorpusSource | str | Path]) -> list[Document]:
    """Documents of every corpus entry (a recipe `CorpusSource`, or a plain path: file, folder or glob)."""
    return _load_corpus(sources)[0]


def load_dataset(data: DataSection) -> Dataset:
    """The recipe's documents and its train/eval questions: the question files plus questions from CSV rows."""
    documents, generated = _load_corpus(data.corpus)
    generated = _drop_shared_questions(generated)
    train = (load_qa(data.train) if data.train else []) + [qa for split, _ in generated for qa in split]
    held_out = (load_qa(data.eval) if data.eval else []) + [qa for _, split in generated for qa in split]
    if train and not held_out and any(split for split, _ in generated):
        # One row with questions: the split keeps it for training, as it holds out at most all rows but one. Each
        # corpus entry splits its own rows: two files of one row each hold out nothing either.
        rows = {qa.source for split, _ in generated for qa in split}
        where = ("all come from one row, which goes" if len(rows) == 1 else
                 f"come from {len(rows)} rows, but each corpus entry splits its own rows and none held one out: each "
                 "entry's rows go")
        raise DataError(f"no eval questions: the questions generated from CSV rows {where} to training (a split needs "
                        "2 rows with questions in one entry); add rows, or give a data.eval file")
    if not train or not held_out:
        raise DataError(f"no {'training' if not train else 'eval'} questions: the question files and the "
                        "questions generated from CSV rows are all empty")
    _warn_if_not_in_document(documents, [qa for pair in generated for split in pair for qa in split])
    ids = {doc.id for doc in documents}
    unknown = [qa.source for qa in train + held_out if qa.source and qa.source not in ids]
    if unknown:
        logger.warning("%s a source that is no corpus document (the first: %r%s); retrieval recall counts %s as "
                       "a miss", "1 question names" if len(unknown) == 1 else f"{len(unknown)} questions name",
                       unknown[0], _id_hint(unknown[0], ids), "it" if len(unknown) == 1 else "each")
    _warn_if_not_held_out(train, held_out)
    _warn_if_repeated(train, "training", "each copy is trained on")
    _warn_if_repeated(held_out, "eval", "each copy counts in the eval means and intervals")
    return Dataset(documents, train, held_out)


def _id_hint(source: str, ids: set[str]) -> str:
    """A Markdown section named by its headings as written (`grapes#Grapes/Pinot Noir`) rather than by its id."""
    file, sep, headings = source.partition("#")
    slugged = f"{file}#{heading_path(headings.split('/'))}" if sep else None
    return f"; did you mean {slugged!r}? Markdown ids are slugs" if slugged != source and slugged in ids else ""


def _drop_shared_questions(generated: list[tuple[list[QA], list[QA]]]) -> list[tuple[list[QA], list[QA]]]:
    """Each entry's questions less those another entry's rows ask too (one wine in two CSV files): as within an
    entry, their source is ambiguous, and each entry splits its own rows, so the copies could land on both sides."""
    sources: dict[str, set[str]] = {}
    everything = [qa for pair in generated for split in pair for qa in split]
    for qa in everything:
        sources.setdefault(_asked(qa), set()).add(qa.source)
    shared = {asked for asked, found in sources.items() if len(found) > 1}
    if not shared:
        return generated
    logger.warning("dropped %d questions that rows of more than one corpus entry generate (first: %r): their source "
                   "is ambiguous", len(shared), next(qa.question for qa in everything if _asked(qa) in shared))
    return [tuple([qa for qa in split if _asked(qa) not in shared] for split in pair) for pair in generated]


def _warn_if_not_in_document(documents: list[Document], generated: list[QA]) -> None:
    """A question generated from a row whose answer its document never states (an answer column the row template
    leaves out): the retrieved context cannot answer it, yet it is trained on or counts in the eval."""
    texts = {doc.id: folded(doc.text) for doc in documents}
    missing = [qa for qa in generated if folded(qa.answer) not in texts.get(qa.source, "")]
    if missing:
        logger.warning("%d of %d questions generated from CSV rows have an answer their row's document does not hold "
                       "(first: %r, answer %r, source %r): put the answer column in the row template, or no retrieved "
                       "context can answer them", len(missing), len(generated), missing[0].question,
                       missing[0].answer, missing[0].source)


def _asked(qa: QA) -> str:
    return folded(qa.question)


def _warn_if_repeated(split: list[QA], name: str, effect: str) -> None:
    """A question asked twice in a split (a file concatenated with itself, say) counts twice: in eval, its answer
    moves the mean and the interval twice as far; in training, it gets twice the steps."""
    seen: set[str] = set()
    repeated = [qa for qa in split if _asked(qa) in seen or seen.add(_asked(qa))]
    if repeated:
        logger.warning("%d of %d %s questions in the data repeat an earlier one (first: %r); %s", len(repeated),
                       len(split), name, repeated[0].question, effect)


def _warn_if_not_held_out(train: list[QA], held_out: list[QA]) -> None:
    """The report calls the eval split held out: say so when it is not (a copied file, an overlapping split)."""
    asked = {_asked(qa) for qa in train}
    repeated = [qa for qa in held_out if _asked(qa) in asked]
    if repeated:
        logger.warning("%d of %d eval questions are also training questions (first: %r): the tuned model's eval "
                       "figures then measure recall of its training, not learning", len(repeated), len(held_out),
                       repeated[0].question)
    sources = {qa.source for qa in train if qa.source}
    shared = [qa for qa in held_out if qa.source in sources]
    if shared:
        logger.warning("%d of %d eval questions ask about documents that training questions use too (first: %r, "
                       "source %r): the eval split is not held out by document", len(shared), len(held_out),
                       shared[0].question, shared[0].source)


def _load_corpus(sources) -> tuple[list[Document], list[tuple[list[QA], list[QA]]]]:
    documents: list[Document] = []
    generated = []
    first: dict[str, str] = {}  # document id -> where it was first seen
    taken: dict[Path, Path] = {}  # real path -> the path it was read under: no file is read twice
    for source in sources:
        spec = source if hasattr(source, "path") else None
        questions = getattr(spec, "questions", None)
        columns = question_columns(questions.templates) if questions else []
        rows: list[Row] = []
        files = expand(spec.path if spec else source, taken)
        csv_only = spec and (spec.template or spec.id_column or spec.metadata_columns or questions)
        if csv_only and files and not any(path.suffix.lower() == ".csv" for path, _, _ in files):
            # The recipe checks a single file; a folder or glob is known only now.
            raise DataError(f"{spec.path}: template, id_column, metadata_columns and questions are for CSV files, "
                            "and no .csv file is in it")
        for path, file_id, explicit in files:
            loaded = load_file(
                path,
                file_id,
                explicit=explicit,
                template=getattr(spec, "template", None),
                id_column=getattr(spec, "id_column", None),
                metadata_columns=getattr(spec, "metadata_columns", ()),
                row_columns=columns,
            )
            for doc, where in loaded.documents:
                if doc.id in first:
                    raise DataError(f"{where}: duplicate document id {doc.id!r} (first in {first[doc.id]})")
                first[doc.id] = where
                documents.append(doc)
            rows += loaded.rows
        if questions:
            pair = row_questions(rows, questions.templates, questions.eval_fraction, questions.seed)
            asked = {qa.source for split in pair for qa in split}
            if len(asked) < len(rows):
                logger.info("%s: %d of %d rows give no question (each template's answer or a placeholder blank, or "
                            "its question asked by another row too); of the rest, %d are held out for eval", spec.path,
                            len(rows) - len(asked), len(rows), len({qa.source for qa in pair[1]}))
            generated.append(pair)
    if not documents:
        raise DataError(f"no documents in {', '.join(str(getattr(s, 'path', s)) for s in sources)}")
    return documents, generated
