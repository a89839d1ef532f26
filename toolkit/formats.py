"""Corpus file formats: the documents each file holds.

- `.md` (or `.markdown`): one document per heading section (`# …` to `######`; headings inside code fences don't
  count), id `file#heading/subheading` of slugs (`grapes#grapes/pinot-noir`; a repeated one `-2`); text before the
  first heading is the document `file`. A YAML front matter block (`---` … `---` or `...` at the very start) is no
  text: its scalar values are metadata of each of the file's documents.
- `.txt`: one document per file, id `file` (the chunker keeps its paragraphs together where they fit).
- `.jsonl`: one document per line: `text`, optional `id` (default `file#line`), `title`, `metadata` (an object of
  strings, numbers and booleans).
- `.csv`: one document per row, its text rendered from a row template such as `{title}: a {variety} from
  {country}. {description}`; `id_column` gives stable ids (`file#value`), `metadata_columns` are stored with the
  chunks.

`file` is the file id `toolkit.loaders.expand` gives. Every error is one line naming the file and line.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit.loaders import (
    MARKDOWN_SUFFIXES,
    DataError,
    Document,
    Row,
    check_text,
    metadata_key_problem,
    read_jsonl,
    read_text,
    render,
    split_lines,
    string_field,
    template_fields,
)
from toolkit.recipe_yaml import yaml11_int_surprise, yaml_line, yaml_problem


@dataclass
class Loaded:
    """What one file gives: its documents with the place each starts (for error messages), and its CSV rows."""

    documents: list[tuple[Document, str]]
    rows: list[Row] = field(default_factory=list)


def load_file(
    path: Path,
    file_id: str,
    *,
    explicit: bool = True,
    template: str | None = None,
    id_column: str | None = None,
    metadata_columns: Sequence[str] = (),
    row_columns: Sequence[str] = (),
) -> Loaded:
    """Documents of one corpus file. `row_columns`: for a CSV, also keep the rows (these columns) for questions."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if template is None:
            raise DataError(f"{path}: a .csv corpus file needs a row template: {{path: {path}, template: '…'}}")
        loaded = _load_csv(path, file_id, template, id_column, list(metadata_columns), list(row_columns))
        if explicit and not loaded.documents:  # a header alone (a failed export), or the template's columns blank
            raise DataError(f"{path}: no documents: no row below the header has a value in the template's columns "
                            f"({', '.join(template_fields(template))})")
    elif suffix == ".jsonl":
        loaded = Loaded(_load_jsonl(path, file_id))
        if explicit and not loaded.documents:
            raise DataError(f"{path}: empty document (no JSON lines)")
    else:
        text = read_text(path)
        if not text.strip():
            if explicit:
                raise DataError(f"{path}: empty document")
            return Loaded([])
        if suffix in MARKDOWN_SUFFIXES:
            lines = split_lines(text)  # a form feed or U+2028 in a line stays in it
            metadata, start = _front_matter(path, lines)
            loaded = Loaded(_markdown_sections(path, file_id, lines, start, metadata))
            if explicit and not loaded.documents:
                raise DataError(f"{path}: no documents: " + ("no text outside the front matter and headings" if start
                                                             else "only headings, with no text under them"))
        else:
            loaded = Loaded([(Document(file_id, text, file_id), str(path))])
    return loaded


# ------------------------------------------------------------------------------------------- jsonl


def _load_jsonl(path: Path, file_id: str) -> list[tuple[Document, str]]:
    docs = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        raw_id = obj.get("id")
        if raw_id is None:
            doc_id = f"{file_id}#{lineno}"
        elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
            doc_id = str(raw_id)
        else:
            doc_id = string_field(obj, "id", where)
        if "text" not in obj and "question" in obj and "answer" in obj:
            # A question file kept in a corpus folder: "'text' ... the key is missing" did not say what was wrong.
            raise DataError(f"{where}: a question, not a document (no 'text'): question files go in data.train and "
                            "data.eval; keep them out of the folders and globs of data.corpus")
        text = string_field(obj, "text", where)
        title = string_field(obj, "title", where, required=False)
        docs.append((Document(doc_id, text, title, _json_metadata(obj.get("metadata"), where)), where))
    return docs


def _json_metadata(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: 'metadata' must be an object of strings, numbers and booleans")
    metadata = {}
    for key, item in value.items():
        check_text(key, "a 'metadata' key", where)
        if problem := metadata_key_problem(key):
            raise DataError(f"{where}: metadata key {key!r} {problem}; rename it")
        if item is None or item == "":
            continue  # Chroma metadata cannot hold None; an empty value is no value
        if not isinstance(item, (str, int, float, bool)):
            raise DataError(f"{where}: metadata {key!r} must be a string, number or boolean, got {type(item).__name__}")
        if isinstance(item, str):
            check_text(item, f"metadata {key!r}", where)
        if isinstance(item, float) and not math.isfinite(item):  # json reads NaN and Infinity; Chroma drops them
            raise DataError(f"{where}: metadata {key!r} must be a finite number, got {item}")
        metadata[key] = item
    return metadata


# ------------------------------------------------------------------------------------------- markdown


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


_FRONT_MATTER_OPEN = re.compile(r"---[ \t]*")
_FRONT_MATTER_CLOSE = re.compile(r"(?:---|\.\.\.)[ \t]*")


class _FrontMatterLoader(yaml.SafeLoader):
    """safe_load, less YAML 1.1's two int surprises, which YAML 1.2 (Hugo's reader) does not have: `zip: 01234`
    would be the octal 668 and `time: 1:30` the base-60 90. Both stay the text that was written."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    text = loader.construct_scalar(node)
    if yaml11_int_surprise(text) is not None:
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_FrontMatterLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _front_matter(path: Path, lines: list[str]) -> tuple[dict, int]:
    """The metadata of a YAML front matter block (Hugo, Jekyll, Obsidian, MkDocs) and the number of lines it takes
    (0 without one). Only its scalar values are kept: Chroma metadata cannot hold a list or a mapping (`tags:
    [red]`), and a key the index cannot store (`source`, as notes often have) is left out, as a CSV column that is no
    metadata column is: these keys were written for another tool, not chosen for the index."""
    if not lines or not _FRONT_MATTER_OPEN.fullmatch(lines[0]):
        return {}, 0
    end = next((i for i in range(1, len(lines)) if _FRONT_MATTER_CLOSE.fullmatch(lines[i])), None)
    if end is None:
        return {}, 0  # never closed: as in Markdown, the `---` is a thematic break and the rest is text
    content = "\n".join(lines[1:end])
    try:
        raw = yaml.load(content, Loader=_FrontMatterLoader)
    except yaml.YAMLError as err:
        line = (yaml_line(err, content) or 0) + 1
        raise DataError(f"{path}:{line}: invalid YAML in the front matter: {yaml_problem(err)}") from None
    except ValueError as err:  # an int of over 4300 digits: Python's own limit, not a YAMLError
        raise DataError(f"{path}:1: invalid front matter: {err}") from None
    if raw is None:
        return {}, end + 1  # `---` then `---`: front matter with nothing in it
    if not isinstance(raw, dict):
        # A paragraph or a list between two thematic breaks is plain Markdown, which YAML also reads (as a string or
        # a list): only `key: value` lines make front matter, as in Pandoc.
        return {}, 0
    metadata = {}
    for key, value in raw.items():
        if isinstance(value, datetime.date):  # `date: 2024-05-01`, a datetime too: Chroma stores no dates
            value = value.isoformat()
        if not isinstance(key, str) or metadata_key_problem(key) or not isinstance(value, (str, int, float, bool)):
            continue
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and not math.isfinite(value)):
            continue  # no value (Chroma drops a NaN or infinity, and with it all of the chunk's metadata)
        if isinstance(value, str):
            check_text(value, f"front matter {key!r}", str(path))
        metadata[key] = value
    return metadata, end + 1


def _markdown_sections(
    path: Path, file_id: str, lines: list[str], start: int, metadata: dict
) -> list[tuple[Document, str]]:
    """A document per heading section of `lines[start:]`; headings above a section name it (`file#wine/sherry`)."""
    sections: list[tuple[int, list[str], list[str]]] = []  # (heading line, heading path, lines)
    current: tuple[int, list[str], list[str]] = (0, [], [])
    stack: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    fence = ""  # the open code fence; as in CommonMark, only the same character, at least as many, closes it
    for lineno, line in enumerate(lines[start:], start + 1):
        marks = _FENCE.match(line)
        if marks and not fence and not ("`" in marks.group(1) and "`" in marks.group(2)):
            fence, heading = marks.group(1), None
        elif marks and fence and marks.group(1)[0] == fence[0] and len(marks.group(1)) >= len(fence) \
                and not marks.group(2).strip():
            fence, heading = "", None
        else:
            heading = None if fence else _HEADING.match(line)
        if heading and heading.group(2).strip():
            sections.append(current)
            level, title = len(heading.group(1)), heading.group(2).strip()
            stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, title)]
            current = (lineno, [t for _, t in stack], [line])
        else:
            current[2].append(line)
    sections.append(current)

    docs, used = [], set()
    for lineno, titles, section in sections:
        body = "\n".join(section[1:] if titles else section)
        if not body.strip():
            continue  # a heading directly followed by another, or nothing before the first heading
        if titles:
            slug = base = heading_path(titles)
            n = 2
            while slug in used:
                slug, n = f"{base}-{n}", n + 1
            used.add(slug)
            doc_id, title, where = f"{file_id}#{slug}", " › ".join(titles), f"{path}:{lineno}"
        else:
            doc_id, title, where = file_id, file_id, str(path)
        docs.append((Document(doc_id, "\n".join(section).strip("\n"), title, dict(metadata)), where))
    return docs


def heading_path(titles: list[str]) -> str:
    """A Markdown section's id after `file#`: its heading and those above it, each a slug (`grapes/pinot-noir`)."""
    return "/".join(re.sub(r"[^\w]+", "-", title.lower()).strip("-_") or "section" for title in titles)


# ------------------------------------------------------------------------------------------- csv


def _load_csv(
    path: Path, file_id: str, template: str, id_column: str | None, metadata_columns: list[str], row_columns: list[str]
) -> Loaded:
    # Long reviews or articles in one cell are fine. The limit is process-wide, so it is put back afterwards.
    limit = csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    try:
        return _read_csv(path, file_id, template, id_column, metadata_columns, row_columns)
    finally:
        csv.field_size_limit(limit)


def _read_csv(
    path: Path, file_id: str, template: str, id_column: str | None, metadata_columns: list[str], row_columns: list[str]
) -> Loaded:
    # strict: a quote left open runs to the end of the file and is an error, not one row swallowing the rest.
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty CSV file (no header)")
        header = _header(path, header)
        fields = template_fields(template)
        needed = {"template": fields, "id_column": [id_column] if id_column else [],
                  "metadata column": metadata_columns, "question column": row_columns}
        # A semicolon- or tab-separated export reads as one column named by the whole header line.
        delimiter = next((d for d in (";", "\t") if len(header) == 1 and d in header[0]), None)
        hint = f"; the file looks {delimiter!r}-delimited, but a .csv corpus file must use commas" if delimiter else ""
        for what, names in needed.items():
            for name in names:
                if name not in header:
                    raise DataError(
                        f"{path}:1: {what} {name!r} is not a column of this file (columns: {', '.join(header)}){hint}"
                    )
        wanted = list(dict.fromkeys(name for names in needed.values() for name in names))
        position = {name: header.index(name) for name in wanted}
        loaded, seen, number = Loaded([]), {}, 0
        start = reader.line_num + 1
        for cells in reader:  # a quoted cell may hold newlines: a row is named by the line it starts on
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            number += 1
            if any(cell.strip() for cell in cells[len(header):]):
                # An unquoted comma in a cell: every cell after it would land in the next column, silently.
                raise DataError(
                    f"{path}:{line}: row {number} has {len(cells)} cells for {len(header)} columns; quote a cell "
                    "that holds a comma"
                )
            missing = [name for name in wanted if position[name] >= len(cells)]
            if missing:
                raise DataError(
                    f"{path}:{line}: row {number} has {len(cells)} of {len(header)} columns: no value for "
                    f"{', '.join(repr(m) for m in missing)}"
                )
            values = {name: cells[position[name]] for name in wanted}
            key = str(number)
            if id_column:
                key = values[id_column].strip()
                if not key:
                    raise DataError(f"{path}:{line}: row {number} has an empty {id_column!r}")
                if key in seen:
                    raise DataError(f"{path}:{line}: duplicate {id_column!r} {key!r} (first on line {seen[key]})")
            seen[key] = line
            text = render(template, values)
            if not text.strip() or (fields and not any(values[name].strip() for name in fields)):
                continue  # a row with none of the template's cells (pandas' index alone) would be a ": " document
            doc_id = f"{file_id}#{key}"
            metadata = {c: _cell_value(values[c]) for c in metadata_columns if values[c].strip()}
            loaded.documents.append((Document(doc_id, text, "", metadata), f"{path}:{line}"))
            if row_columns:
                loaded.rows.append(Row(doc_id, values, line))
    except csv.Error as err:
        # The reader stops where it noticed the error: for a quote left open, the end of the file. The line the
        # row starts on is where to look.
        if str(err) == "unexpected end of data":
            raise DataError(f"{path}:{start}: a quoted cell in the row that starts on this line is never closed "
                            f"(invalid CSV: the quote runs to the end of the file)") from None
        raise DataError(f"{path}:{start}: invalid CSV in the row that starts on this line: {err}") from None
    return loaded


def _header(path: Path, header: list[str]) -> list[str]:
    header = [name.strip() for name in header]
    # pandas writes its index as a first column with no name (Kaggle's winemag-data-130k-v2.csv has one).
    if header and not header[0] and "id" not in header:
        header[0] = "id"
    for i, name in enumerate(header, 1):
        if not name:
            raise DataError(f"{path}:1: column {i} of the header has no name")
        if header.index(name) != i - 1:
            raise DataError(f"{path}:1: column name {name!r} appears twice in the header")
    return header


_INT = re.compile(r"-?(?:0|[1-9]\d{0,15})")
_FLOAT = re.compile(r"-?(?:0|[1-9]\d{0,15})\.\d+")


def _cell_value(text: str) -> str | int | float:
    """Whole numbers and decimals become numbers (so Chroma `where` filters can compare them), the rest stays text."""
    value = text.strip()
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value
