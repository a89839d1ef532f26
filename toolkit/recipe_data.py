"""The data part of the recipe schema: corpus sources (files, folders, globs, CSV rows) and question files.

Split from recipe.py so each file stays readable; `toolkit.recipe` re-exports these names.
"""

from __future__ import annotations

import glob
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from toolkit import loaders
from toolkit.report import file_in_the_way


class _Section(BaseModel):
    # allow_inf_nan off: a weight or rate of .inf/.nan would train on NaN rewards and write NaN into report.json.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True, allow_inf_nan=False)
    # Text fields that may be blank; every other text or path field may not (an empty path is ".", the cwd).
    _blank_ok: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        field = cls.model_fields[info.field_name]
        annotation = field.annotation
        # `training:` with every field commented out is null in YAML: a section, mapping or list with a default
        # then takes that default, as if absent (so `training.trl=null` clears it). A scalar's null stays an error.
        if value is None and not _takes(annotation, type(None)):
            if field.default_factory is not None:
                return field.get_default(call_default_factory=True)
            if field.is_required():
                raise ValueError("required, and empty (null) here")
        # Pydantic's lax mode reads true as 1, and YAML reads yes/no/on/off as booleans: `max_steps: yes` would
        # train one step. A number field takes numbers only.
        if isinstance(value, bool) and _takes_number(annotation) and not _takes(annotation, bool):
            raise ValueError("expected a number, got a boolean (YAML reads yes/no/on/off/true/false as booleans)")
        if (isinstance(value, str) and not value.strip() and info.field_name not in cls._blank_ok
                and (_takes(annotation, str) or _takes(annotation, Path))):
            raise ValueError("must not be empty")
        for text in value if isinstance(value, list) else [value]:
            # A YAML "\ud800" escape: no valid text, and the tokenizer would fail on it after the index was built.
            try:
                text.encode("utf-8") if isinstance(text, str) else None
            except UnicodeEncodeError as err:
                raise ValueError(f"holds a lone surrogate {text[err.start]!r} (a \\ud800-\\udfff escape that is not "
                                 "half of a pair), which is not valid Unicode text") from None
        return value


def _takes(annotation: Any, kind: type) -> bool:
    """Whether a field's type accepts `kind` itself (or anything, Any) at its top level, in a union or under an
    Annotated validator (ExistingPath is an annotated Path)."""
    if annotation is kind or annotation is Any:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated) and any(
        _takes(arg, kind) for arg in typing.get_args(annotation)
    )


def _takes_number(annotation: Any) -> bool:
    return _takes(annotation, int) or _takes(annotation, float)


def expand_home(path: Path) -> Path:
    """`~/reviews.csv` given on the command line (`data.train=~/q.jsonl`): the shell leaves that ~ alone."""
    if "\0" in str(path):  # no file system takes it: pathlib says a folder is not there, and mkdir fails later
        raise ValueError("a path cannot hold a NUL character")
    try:
        return path.expanduser()
    except RuntimeError as err:  # "~nosuchuser/...": pydantic reports ValueErrors only, with the field
        raise ValueError(f"{path}: {err}") from None


def _must_exist(path: Path) -> Path:
    path = expand_home(path)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if path.is_dir():  # else the run picks a backend first and then fails on "Is a directory", naming no field
        raise ValueError(f"{path} is a folder; give a question file (.jsonl)")
    return path


def _a_folder(path: Path) -> Path:
    file = file_in_the_way(path)
    if file is not None:
        raise ValueError(f"{file} is a file, not a folder" + ("" if file == path else f" ({path})"))
    return path


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
HomePath = Annotated[Path, AfterValidator(expand_home)]
FolderPath = Annotated[Path, AfterValidator(expand_home), AfterValidator(_a_folder)]  # one the run writes into

class RowQuestion(_Section):
    question: str = Field(
        description="Question template: {column} placeholders take the row's values, e.g. "
        "\"Which grape variety is '{title}'?\". Rows where a placeholder is blank get no question."
    )
    answer: str = Field(description="The column holding the answer; rows where it is blank get no question.")

    @model_validator(mode="after")
    def _placeholders(self) -> RowQuestion:
        if not loaders.template_fields(self.question):
            raise ValueError(f"question template {self.question!r} has no {{column}} placeholder")
        return self


class RowQuestions(_Section):
    templates: list[RowQuestion] = Field(min_length=1, description="One question per template and row.")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of rows (not questions) held out: a row's questions all land on one side."
    )
    seed: int = Field(0, description="Picks the held-out rows and the question order; same seed, same split.")


class CorpusSource(_Section):
    """One corpus entry. In YAML a plain path stands for {path: ...}."""

    path: Path = Field(
        description="A .md/.markdown/.txt/.jsonl/.csv file, a folder (its files of those types, recursively) or a glob "
        "such as notes/**/*.md."
    )
    template: str | None = Field(
        None,
        description="CSV (required): a row's document text, {column} placeholders, e.g. "
        "'{title}: a {variety} from {province}, {country}. {description}'.",
    )
    id_column: str | None = Field(
        None,
        description="CSV: a column with a unique id per row; document id = '<file>#<value>'. Default: the row "
        "number, which shifts (and re-embeds) when rows are inserted.",
    )
    metadata_columns: list[str] = Field(
        default_factory=list,
        description="CSV: columns stored with each chunk (Chroma metadata; empty values left out, numbers as numbers).",
    )
    questions: RowQuestions | None = Field(
        None, description="CSV: generate question/answer pairs from the rows (added to data.train / data.eval)."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path) -> Path:
        path = expand_home(path)
        if loaders.is_glob(path) and not path.exists():  # "my docs [v1]" that exists is that folder, not a pattern
            if not glob.glob(str(path), recursive=True):
                raise ValueError(f"no file matches {path}")
        elif not path.exists():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        if template is not None and not loaders.template_fields(template):
            raise ValueError(f"template {template!r} has no {{column}} placeholder")
        return template

    @field_validator("metadata_columns")
    @classmethod
    def _not_reserved(cls, columns: list[str]) -> list[str]:
        for name in columns:
            if name in loaders.RESERVED_METADATA:
                raise ValueError(f"metadata column {name!r} is reserved for the index (it stores {name} itself)")
            if problem := loaders.metadata_key_problem(name):
                raise ValueError(f"metadata column {name!r} {problem}; rename the column")
        return columns

    @model_validator(mode="after")
    def _csv_fields(self) -> CorpusSource:
        csv_only = [name for name in ("template", "id_column", "questions") if getattr(self, name) is not None]
        csv_only += ["metadata_columns"] if self.metadata_columns else []
        single_file = self.path.is_file()
        if single_file and self.path.suffix.lower() == ".csv" and self.template is None:
            raise ValueError(f"{self.path} is a CSV file: give a row template, e.g. template: '{{title}}. {{text}}'")
        if single_file and self.path.suffix.lower() != ".csv" and csv_only:
            raise ValueError(f"{', '.join(csv_only)}: only for .csv files, and {self.path} is not one")
        if self.questions is not None and self.template is None:
            raise ValueError("questions are generated from CSV rows: give the CSV's row template too")
        return self


class DataSection(_Section):
    corpus: list[CorpusSource] = Field(
        description="Documents to index. Each entry is a path (file, folder or glob: .jsonl with {text, id?, "
        "title?, metadata?} per line, .md/.markdown split at headings, .txt one document per file) or a mapping "
        "{path, template, id_column, metadata_columns, questions} for a CSV with one document per row.",
        min_length=1,
    )
    train: ExistingPath | None = Field(
        None,
        description="Training questions: .jsonl with question, answer, aliases, source. Optional when a corpus "
        "entry generates questions; both are used when given.",
    )
    eval: ExistingPath | None = Field(
        None, description="Held-out questions, same columns; their documents must not be in train."
    )
    max_train_questions: int | None = Field(None, ge=1, description="Use only the first N training questions.")

    @model_validator(mode="after")
    def _has_questions(self) -> DataSection:
        if not any(source.questions for source in self.corpus):
            missing = [name for name in ("train", "eval") if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} question file{'s' if len(missing) > 1 else ''} needed: no corpus "
                    "entry generates questions from CSV rows"
                )
        return self
