"""Corpus file formats: which files a corpus entry names, and the documents each file holds.

- `.md`: one document per heading section (`# …` to `######`; headings inside code fences don't count), id
  `file#heading/subheading`; text before the first heading is the document `file`.
- `.txt`: one document per file, id `file` (the chunker keeps its paragraphs together where they fit).
- `.jsonl`: one document per line: `text`, optional `id` (default `file#line`), `title`, `metadata` (an object of
  strings, numbers and booleans).
- `.csv`: one document per row, its text rendered from a row template such as `{title}: a {variety} from
  {country}. {description}`; `id_column` gives stable ids (`file#value`), `metadata_columns` are stored with the
  chunks.

`file` is the path without its suffix, relative to the folder (or the fixed part of the glob) the entry names; for
an entry naming one file it is the file name without suffix. Every error is one line naming the file and line.
Reading never touches the index.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".md", ".txt", ".jsonl", ".csv")
# Chunk metadata the index writes itself; a document's own metadata may not use these names.
RESERVED_METADATA = ("source", "position")
_GLOB_CHARS = re.compile(r"[*?\[]")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)  # str -> str | int | float | bool, stored with every chunk


@dataclass(frozen=True)
class Row:
    """A CSV row kept for generating questions: the id of its document and its values by column."""

    doc_id: str
    values: dict[str, str]
    line: int


# ------------------------------------------------------------------------------------------- files


def is_glob(path: str | Path) -> bool:
    return bool(_GLOB_CHARS.search(str(path)))


def expand(path: str | Path) -> list[tuple[Path, str, bool]]:
    """(file, file id, named explicitly) for a corpus entry: one file, a folder (recursively) or a glob.

    Folders and globs take only files with a known suffix and skip hidden ones; a file named explicitly must have
    a known suffix.
    """
    text = str(path)
    if is_glob(text) and not Path(text).exists():  # an existing "my docs [v1]" is that folder, not a pattern
        parts = Path(text).parts
        fixed = next(i for i, part in enumerate(parts) if is_glob(part))
        base = Path(*parts[:fixed]) if fixed else Path(".")
        found = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        files = [p for p in found if p.is_file() and _wanted(p, base)]
        if not files:
            raise DataError(f"{text}: no {', '.join(SUFFIXES)} files match")
        return [(p, _file_id(p, base), False) for p in map(_utf8_name, files)]
    path = _utf8_name(Path(path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p, path))
        if not files:
            raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return [(p, _file_id(p, path), False) for p in map(_utf8_name, files)]
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported corpus file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    return [(path, path.stem, True)]


def _utf8_name(path: Path) -> Path:
    """`path`, unless its name is not UTF-8: Python keeps such bytes as lone surrogates, which a document id made
    from the name (and an error message naming it) could not be written with."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
        raise DataError(f"{shown}: the file name is not UTF-8; rename it") from None
    return path


def _wanted(path: Path, base: Path) -> bool:
    relative = path.relative_to(base) if path.is_relative_to(base) else path
    return path.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in relative.parts)


def _file_id(path: Path, base: Path) -> str:
    relative = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    return relative.with_suffix("").as_posix()


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a leading BOM dropped); one-line errors for unreadable or non-UTF-8 files."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


# ------------------------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """Column names a `{column}` template uses, in order; ValueError for anything but plain placeholders.

    `{{` and `}}` stand for literal braces.
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r}: {err}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.strip():
            raise ValueError(f"template {template!r}: empty placeholder {{}}; name a column")
        if spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"template {template!r}: only plain {{column}} placeholders, not {written}")
        names.append(name)
    return names


def render(template: str, values: dict[str, str]) -> str:
    """The template with each `{column}` replaced by its value verbatim (values may contain braces)."""
    parsed = string.Formatter().parse(template)
    return "".join(literal + (values[name] if name is not None else "") for literal, name, _, _ in parsed)


# ------------------------------------------------------------------------------------------- formats


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
        return _load_csv(path, file_id, template, id_column, list(metadata_columns), list(row_columns))
    if suffix == ".jsonl":
        loaded = Loaded(_load_jsonl(path, file_id))
        if explicit and not loaded.documents:
            raise DataError(f"{path}: empty document (no JSON lines)")
    else:
        text = read_text(path)
        if not text.strip():
            if explicit:
                raise DataError(f"{path}: empty document")
            return Loaded([])
        if suffix == ".md":
            loaded = Loaded(_markdown_sections(path, file_id, text))
        else:
            loaded = Loaded([(Document(file_id, text, file_id), str(path))])
    return loaded


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    rows = []
    # Not str.splitlines: it also splits on U+2028, U+0085 and others, which JSON allows raw inside strings (and
    # json.dumps(..., ensure_ascii=False) writes so). A raw \r or \n never is.
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", read_text(path)), 1):
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


def string_field(obj: dict, key: str, where: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return check_text(value, f"'{key}'", where)


def check_text(value: str, what: str, where: str) -> str:
    """`value`, unless it holds a lone surrogate: DataError naming `what` (the field) and `where` (file:line).

    A file decoded as UTF-8 never holds one, but a JSON escape such as `\\ud800` that is not half of a pair decodes
    to one; nothing can encode it, so the hashing, tokenizing or storing of it would fail far from the file.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: {what} holds a lone surrogate {value[err.start]!r} (a \\ud800-\\udfff escape that is not half "
            "of a pair), which is not valid Unicode text"
        ) from None
    return value


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
        if key in RESERVED_METADATA:
            raise DataError(f"{where}: metadata key {key!r} is reserved for the index; rename it")
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


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def _markdown_sections(path: Path, file_id: str, text: str) -> list[tuple[Document, str]]:
    """A document per heading section; headings above a section name it (`file#wine/sherry`)."""
    sections: list[tuple[int, list[str], list[str]]] = []  # (heading line, heading path, lines)
    current: tuple[int, list[str], list[str]] = (0, [], [])
    stack: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    fence = ""  # the open code fence; as in CommonMark, only the same character, at least as many, closes it
    for lineno, line in enumerate(text.splitlines(), 1):
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
    for lineno, titles, lines in sections:
        body = "\n".join(lines[1:] if titles else lines)
        if not body.strip():
            continue  # a heading directly followed by another, or nothing before the first heading
        if titles:
            slug = base = "/".join(_slug(t) for t in titles)
            n = 2
            while slug in used:
                slug, n = f"{base}-{n}", n + 1
            used.add(slug)
            doc_id, title, where = f"{file_id}#{slug}", " › ".join(titles), f"{path}:{lineno}"
        else:
            doc_id, title, where = file_id, file_id, str(path)
        docs.append((Document(doc_id, "\n".join(lines).strip("\n"), title), where))
    return docs


def _slug(title: str) -> str:
    return re.sub(r"[^\w]+", "-", title.lower()).strip("-_") or "section"


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
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty CSV file (no header)")
        header = _header(path, header)
        needed = {"template": template_fields(template), "id_column": [id_column] if id_column else [],
                  "metadata column": metadata_columns, "question column": row_columns}
        for what, names in needed.items():
            for name in names:
                if name not in header:
                    raise DataError(
                        f"{path}:1: {what} {name!r} is not a column of this file (columns: {', '.join(header)})"
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
            if not text.strip():
                continue
            doc_id = f"{file_id}#{key}"
            metadata = {c: _cell_value(values[c]) for c in metadata_columns if values[c].strip()}
            loaded.documents.append((Document(doc_id, text, "", metadata), f"{path}:{line}"))
            if row_columns:
                loaded.rows.append(Row(doc_id, values, line))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV: {err}") from None
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
