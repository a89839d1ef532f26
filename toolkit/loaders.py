"""Corpus files: which files a corpus entry names, how they are read, and what every format's reader shares
(the document and row types, `{column}` templates, JSON lines, text checks). The readers of each format are in
`toolkit.formats`.

`file` is the path without its suffix, relative to the folder (or the fixed part of the glob) the entry names; for
an entry naming one file it is the file name without suffix. Every error is one line naming the file and line.
Reading never touches the index.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

MARKDOWN_SUFFIXES = (".md", ".markdown")  # lowercased, as every suffix is compared
SUFFIXES = (*MARKDOWN_SUFFIXES, ".txt", ".jsonl", ".csv")
# Chunk metadata the index writes itself; a document's own metadata may not use these names.
RESERVED_METADATA = ("source", "position")


def metadata_key_problem(key: str) -> str | None:
    """Why the index cannot store a metadata key, or None: the toolkit's own names, and the keys Chroma refuses (its
    batch fails mid-sync otherwise)."""
    if key in RESERVED_METADATA:
        return "is reserved for the index"
    if not key or key[0] in "#$" or key.startswith("chroma:"):
        return "cannot be stored in the index (Chroma refuses a key that is empty or starts with '#' or '$', and " \
               "drops one that starts with 'chroma:')"
    return None
_GLOB_CHARS = re.compile(r"[*?\[]")

logger = logging.getLogger(__name__)


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


def expand(path: str | Path, taken: dict[Path, Path] | None = None) -> list[tuple[Path, str, bool]]:
    """(file, file id, named explicitly) for a corpus entry: one file, a folder (recursively) or a glob.

    Folders and globs take only files with a known suffix and skip hidden ones; a file named explicitly must have
    a known suffix. `taken` (real path → the path that took it), shared by a recipe's entries, skips a file an
    earlier entry took, under its own name or through a link.
    """
    taken = {} if taken is None else taken
    text = str(path)
    if is_glob(text) and not Path(text).exists():  # an existing "my docs [v1]" is that folder, not a pattern
        parts = Path(text).parts
        fixed = next(i for i, part in enumerate(parts) if is_glob(part))
        base = Path(*parts[:fixed]) if fixed else Path(".")
        found = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if _wanted(Path(p), base)]
        linked = [p for p in found if _through_link(p, base)]
        files = [p for p in found if p not in linked and not _broken_link(p) and p.is_file()]
        if not files:
            inside = f" outside linked folders (not entered; {linked[0]} is in one)" if linked else ""
            raise DataError(f"{text}: no {', '.join(SUFFIXES)} files match{inside}")
        return [(p, _file_id(p, base), False) for p in map(_utf8_name, _once(files, taken))]
    path = _utf8_name(Path(path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _wanted(p, path) and not _broken_link(p) and p.is_file())
        if not files:
            raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return [(p, _file_id(p, path), False) for p in map(_utf8_name, _once(files, taken))]
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported corpus file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    return [(path, path.stem, True)] if _once([path], taken) else []


def takes(entry: str | Path, path: Path) -> bool:
    """Whether the corpus entry (a file, folder or glob, as `expand` reads it) would read `path`, a file that need
    not exist yet: a command writing a Markdown report into the corpus would have it indexed as a document."""
    text = str(entry)
    if path.suffix.lower() not in SUFFIXES:
        return False
    pattern: tuple[str, ...] = ("**", "*")  # a folder: every file under it
    base = Path(entry)
    if is_glob(text) and not base.exists():
        parts = base.parts
        fixed = next(i for i, part in enumerate(parts) if is_glob(part))
        base, pattern = Path(*parts[:fixed]) if fixed else Path("."), parts[fixed:]
    elif not base.is_dir():
        return False  # one file: that file alone
    real, folder = path.resolve(), base.resolve()
    if not real.is_relative_to(folder):
        return False
    relative = real.relative_to(folder).parts
    return not any(part.startswith(".") for part in relative) and _matches(pattern, relative)


def corpus_taking(corpus, folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first corpus entry (`data.corpus`) that would read any file `names` once written into `folder`."""
    paths = [getattr(source, "path", source) for source in corpus]
    return next((Path(entry) for entry in paths if any(takes(entry, folder / name) for name in names)), None)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether path `parts` match glob `pattern` parts, `**` standing for any number of folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:])


def _through_link(path: Path, base: Path) -> bool:
    """Whether `path` lies in a linked folder under `base`. A folder entry's walk does not enter those, and a
    glob's `**` would: into a link to a parent it loops, taking every file again at each level until ELOOP."""
    relative = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    return any((base / Path(*relative.parts[:i])).is_symlink() for i in range(1, len(relative.parts)))


def _broken_link(path: Path) -> bool:
    """Whether `path` is a link to nothing (a moved or deleted file): such a file is left out, and said so."""
    broken = path.is_symlink() and not path.exists()
    if broken:
        logger.warning("skipping %s: a link to %s, which does not exist", path, path.readlink())
    return broken


def _once(files: list[Path], taken: dict[Path, Path]) -> list[Path]:
    """`files` less those that are the same file as one taken before (a link to it, or an earlier entry naming it
    too): its documents would be indexed twice under two ids, and retrieval would fill top_k with copies. Within
    `files` a real file goes before a link to it, so that the link does not take the file's id."""
    kept = set()
    for file in sorted(files, key=Path.is_symlink):  # stable: links last, else in the given order
        first = taken.setdefault(file.resolve(), file)
        if first is file:
            kept.add(file)
        elif first == file:
            logger.warning("skipping %s: an earlier corpus entry took it", file)
        elif first.is_symlink() and not file.is_symlink():
            # Within an entry the real file goes first; across entries the earlier entry wins, link or not.
            logger.warning("skipping %s: an earlier corpus entry took it through the link %s, under that link's id "
                           "(list this file's entry first to keep its own)", file, first)
        else:
            logger.warning("skipping %s: the same file as %s", file, first)
    return [file for file in files if file in kept]


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
        line = len(_LINE_BREAK_BYTES.findall(raw, 0, err.start)) + 1
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


# ------------------------------------------------------------------------------------------- shared by the readers


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of `text`, split only on \\r\\n, \\r and \\n (as CommonMark does); a final break gives a last "".

    Not str.splitlines: it also splits on form feeds (which text extracted from PDFs holds between pages), \\v,
    \\x1c-\\x1e, U+0085, U+2028 and U+2029, none of which ends a line in a Markdown, JSON lines or CSV file.
    """
    return _LINE_BREAK.split(text)


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    rows = []
    # JSON allows U+2028, U+0085 and the others raw inside strings (json.dumps(..., ensure_ascii=False) writes so);
    # a raw \r or \n never is.
    for lineno, line in enumerate(split_lines(read_text(path)), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
        except _RepeatedKey as err:
            raise DataError(f"{path}:{lineno}: key {err.args[0]!r} appears twice in one JSON object") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: invalid JSON: nested too deeply") from None
        except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
            raise DataError(
                f"{path}:{lineno}: invalid JSON: an integer longer than {sys.get_int_max_str_digits()} digits"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append((lineno, obj))
    return rows


class _RepeatedKey(Exception):
    """A key given twice in one JSON object."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """The object, unless a key repeats: plain json keeps the last value silently, hiding a mistake in the file."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


def string_field(obj: dict, key: str, where: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: '{key}' must be a non-empty string, got {_what(obj, key)}")
    return check_text(value, f"'{key}'", where)


def _what(obj: dict, key: str) -> str:
    # What the field holds, in JSON's words: a number is the commonest mistake (pandas writes a year as 1997).
    value = obj.get(key)
    if key not in obj:
        return "none (the key is missing)"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {json.dumps(value)} (quote it: \"{json.dumps(value)}\")"
    if isinstance(value, str):
        return "a blank string"
    return "a list" if isinstance(value, list) else "an object"


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
