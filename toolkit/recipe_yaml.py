"""Loading a recipe: reading YAML, `extends` parents and dotted overrides into a raw mapping, then `load_recipe`,
which validates it against the schema in `toolkit.recipe` and turns pydantic's errors into one line.

Errors are `RecipeError`s that name the file (and the line, for invalid YAML) and the field. `toolkit.recipe`
re-exports `load_recipe` and `RecipeError`; this module imports the schema only inside the functions that need
it, since the schema module imports this one.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.recipe_data import expand_home

if TYPE_CHECKING:
    from toolkit.recipe import Recipe


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is one line naming the file and the field."""


_NOT_FOUND = re.compile(r"file not found: (.+)$")


def missing_paths_hint(err, recipe_path: Path) -> str:
    """What a "file not found" for a relative path was relative to, or "": a recipe kept beside its data and run
    from the project root, as the README's commands are, reads `notes/` from the project root, and the bare path
    in the error does not say so."""
    missing = [Path(found[1]) for problem in err.errors() if (found := _NOT_FOUND.search(problem["msg"]))]
    missing = [path for path in missing if not path.expanduser().is_absolute()]
    if not missing:
        return ""
    here, beside = Path.cwd(), recipe_path.parent
    hint = f" (relative paths in a recipe are read from the folder the command runs in, {here}"
    there = [path for path in missing if (beside / path).exists()] if beside.resolve() != here.resolve() else []
    if there:
        hint += f"; the recipe's folder {beside} has {there[0]}: run from there, or write the paths from {here}"
    return hint + ")"


class _RepeatedKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: a mistake to fix, not a string that wants quoting."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: plain YAML keeps the last
    one silently, so a second `training:` section would drop every field of the first. And `1e-3` is a float (see
    below)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if repeated:
                raise _RepeatedKey(
                    problem=f"key {key!r} appears twice in one mapping", problem_mark=key_node.start_mark
                )
        return super().construct_mapping(node, deep)


# PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent: `1e-3`, `1E5` and `1.0e5` were strings,
# which pydantic's float fields coerced but a reward param refused ("must be a number, got '1e-3'"). YAML 1.2 reads
# them as floats, as here; ints (`10`) and words (`e5`, `1e`) stay as they were. Added after YAML 1.1's resolvers,
# so this only decides what those left a string.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml11_int_surprise(text: str) -> str | None:
    """What YAML 1.1 reads an int scalar as where YAML 1.2 would not ("an octal number" for a leading zero,
    "a base-60 number" for colons), or None for an ordinary int."""
    digits = text.lstrip("+-").replace("_", "")
    if ":" in digits:
        return "a base-60 number"
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbB":
        return "an octal number"
    return None


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.1's ints, less its two surprises: a leading zero is octal (`max_steps: 010` was 8) and colons count
    in base 60 (`seed: 1:30` was 90). YAML 1.2 reads neither so; here both are errors that say what to write."""
    text = loader.construct_scalar(node)
    kind = yaml11_int_surprise(text)
    if kind is not None:
        value = yaml.SafeLoader.construct_yaml_int(loader, node)
        digits = text.lstrip("+-").replace("_", "")
        if kind == "a base-60 number":
            fix = "quote it for text, or write the number you mean"
        else:
            fix = f"write {text[:len(text) - len(text.lstrip('+-'))]}{digits.lstrip('0') or '0'} for the decimal, " \
                  "or quote it for text"
        raise yaml.constructor.ConstructorError(problem=f"{text} is {kind} in YAML 1.1 ({value}): {fix}",
                                                problem_mark=node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong, in one line: a ReaderError (a control character) has no `problem`, and its str() runs over
    two lines."""
    if isinstance(err, yaml.reader.ReaderError):
        return f"unacceptable character #x{err.character:04x}: {err.reason}"
    return str(getattr(err, "problem", None) or err)


def yaml_line(err: yaml.YAMLError, text: str) -> int | None:
    """The 1-based line of a YAML error, where it has one."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return mark.line + 1
    if isinstance(err, yaml.reader.ReaderError):  # position: an index into the text
        return text.count("\n", 0, err.position) + 1
    return None


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, missing: str) -> dict:
    """One recipe file as a mapping; `missing` is the message when the file does not exist."""
    text = ""
    try:
        text = path.read_bytes().decode("utf-8")
        raw = parse_yaml(text)
    except FileNotFoundError:
        raise RecipeError(missing) from None
    except OSError as err:  # a folder, no read permission, ...
        raise RecipeError(f"{path}: cannot read the recipe: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        line = yaml_line(err, text)
        where = f":{line}" if line else ""
        raise RecipeError(f"{path}{where}: invalid YAML: {yaml_problem(err)}") from None
    except ValueError as err:  # an int of over 4300 digits; a NUL in the path (a YAML "\0" in `extends`)
        raise RecipeError(f"{path}: cannot read the recipe: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    return raw


def read_with_parents(path: Path, chain: tuple[Path, ...], child: Path | None = None) -> tuple[dict, dict]:
    """The recipe at `path` merged over its `extends` parents, and which file set each key path (tuple -> file)."""
    missing = f"{child}: extends: recipe file not found: {path}" if child else f"{path}: recipe file not found"
    if child is None and "=" in str(path) and not path.suffix.startswith((".yaml", ".yml")):
        # `toolkit.run training.max_steps=2 recipes/wine.yaml`: an override where the recipe goes
        missing += " (this looks like an override: the recipe path comes first, then the overrides)"
    raw = read_yaml(path, missing)
    chain = (*chain, path)
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw, {(key,): path for key in raw}
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise RecipeError(f"{path}: extends: must be the path of a recipe file, relative to this one "
                          f"(got {parent_name!r})")
    try:
        parent = Path(os.path.normpath(path.parent / Path(parent_name).expanduser()))
        resolved = parent.resolve()
    except (RuntimeError, ValueError) as err:  # "~nosuchuser/wine.yaml"; a NUL (a YAML "\0")
        raise RecipeError(f"{path}: extends: {parent_name!r}: {err}") from None
    if any(resolved == seen.resolve() for seen in chain):
        raise RecipeError(f"{path}: extends: cycle: {' -> '.join(str(p) for p in (*chain, parent))}")
    merged, origins = read_with_parents(parent, chain, child=path)
    deep_merge(merged, raw, origins, path, ())
    return merged, origins


def deep_merge(base: dict, child: dict, origins: dict, child_path: Path, prefix: tuple) -> None:
    """Merge `child` into `base` in place: mappings key by key, anything else (lists too) replaces."""
    for key, value in child.items():
        here = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            # A copy: a mapping written once with an anchor (`&p`) and used again by alias (`*p`) is one object,
            # and merging into it in place would change every place that uses it.
            base[key] = dict(base[key])
            deep_merge(base[key], value, origins, child_path, here)
            continue
        for known in [k for k in origins if k[: len(here)] == here]:
            del origins[known]  # the parent's value below this key is gone
        base[key] = value
        origins[here] = child_path


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else f"{text[:57]}..."


def apply_override(raw: dict, override: str, path: Path, origins: dict) -> None:
    """Set `section.field=value` (value parsed as YAML; list items by index) in the raw recipe, in place.
    `origins` (key path, list indices as ints → the file that set it) then names `path` for what was set.

    A mapping value merges into a mapping already there, key by key, as `extends` does: `training={max_steps: 1}`
    keeps the recipe's learning rate and LoRA instead of resetting the whole section to the schema's defaults.
    Anything else replaces (set a mapping to `null` first to replace it whole)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"{path}: override {override!r} must look like section.field=value")
    node: Any = raw
    parts = key.split(".")
    if "" in parts:  # ".training", "training.", "training..lora": a stray dot, not a field named ""
        raise RecipeError(f"{path}: override {override!r}: {key!r} has an empty name between dots")
    located: list[str | int] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "٠" (which int() reads as 0).
            # At most 9 of them: int() refuses more than 4300, and no recipe list is that long.
            if not (part.isascii() and part.isdigit()) or len(part) > 9 or int(part) >= len(node):
                raise RecipeError(f"{path}: override {key}: {where} is not an index of a {len(node)}-item list")
            part = int(part)
        elif not isinstance(node, dict):
            parent = ".".join(parts[:depth])
            # A corpus entry may be a plain path in one recipe and a section in another: say what is there.
            raise RecipeError(f"{path}: override {key}: {parent} is not a section but {_shown(node)}; set it whole "
                              f"({parent}=...)")
        located.append(part)
        if last:
            try:
                value = parse_yaml(text) if text else ""
            except ValueError as err:  # an int of over 4300 digits: no YAMLError, but Python's own limit
                raise RecipeError(f"{path}: override {key}: {err}") from None
            except yaml.YAMLError as err:
                # Quoting helps neither a repeated key nor a control character (which YAML refuses anywhere).
                unquotable = isinstance(err, (_RepeatedKey, yaml.reader.ReaderError))
                hint = "" if unquotable else f"; quote it, e.g. {key}='\"...\"'"
                raise RecipeError(
                    f"{path}: override {key}: value is not valid YAML ({yaml_problem(err)}){hint}"
                ) from None
            here = tuple(located)
            existing = node.get(part) if isinstance(node, dict) else node[part]
            if isinstance(value, dict) and isinstance(existing, dict):
                node[part] = existing = dict(existing)  # a copy, as below
                deep_merge(existing, value, origins, path, here)
            else:
                node[part] = value
                for known in [k for k in origins if k[: len(here)] == here]:
                    del origins[known]  # what a parent set below this key is gone
                origins[here] = path
        else:
            child = node.get(part) if isinstance(node, dict) else node[part]
            if child is None:  # absent, or a section left empty (`export:`), which takes its defaults: fill it in
                child = node[part] = {}
            elif isinstance(child, (dict, list)):
                # A copy on the way down: an alias (`params: *p`) is the anchor's very object, and setting
                # `rewards.1.params.max_words` in place would change every reward that shares it.
                child = node[part] = child.copy()
            node = child


# ---------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply `a.b.c=value` overrides (values parsed as YAML) and validate it.

    A recipe may start from another one: `extends: wine.yaml` (relative to the recipe's own folder) loads that
    recipe first (itself possibly extending another) and deep-merges this one over it: mappings merge key by key,
    lists and scalars replace. Overrides apply to the merged recipe and merge the same way. A problem in a field
    that only a parent set names that parent too, so the fix lands in the right file.
    """
    from toolkit.recipe import Recipe  # here: toolkit.recipe imports this module

    try:
        path = expand_home(Path(path))  # a Python caller's or a quoted "~/r.yaml"; the shell expands the rest
    except ValueError as err:
        raise RecipeError(str(err)) from None
    raw, origins = read_with_parents(path, ())
    for override in overrides:
        apply_override(raw, override, path, origins)

    def inherited_from(loc: tuple) -> Path | None:
        # The file that set this field: the longest prefix of `loc` anyone set, unless a key below it came from
        # another file (then the problem may be either file's, and the recipe given is named alone).
        found = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
        below = {file for key, file in origins.items() if len(key) > len(loc) and key[: len(loc)] == loc}
        return found if found not in (None, path) and below <= {found} else None

    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        message = format_validation_error(err, inherited_from) + missing_paths_hint(err, path)
        raise RecipeError(f"{path}: {message}") from None


def format_validation_error(err: ValidationError, inherited_from=None) -> str:
    """One line per problem, joined with '; ': `training.lerning_rate: unknown field (did you mean ...)`.

    `inherited_from(loc)` may name the parent recipe a field came from; it is shown after the field's path.
    """
    messages = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"]) or "recipe"
        parent = inherited_from(tuple(problem["loc"])) if inherited_from else None
        if parent is not None:
            loc = f"{loc} (inherited from {parent})"
        if problem["type"] == "extra_forbidden":
            field = str(problem["loc"][-1])
            known = _field_names_at(problem["loc"][:-1])
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            messages.append(f"{loc}: unknown field ({hint})")
        elif problem["type"] == "missing":
            messages.append(f"{loc}: required field is missing")
        else:
            msg = problem["msg"].removeprefix("Value error, ")
            given = problem.get("input")
            shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
            messages.append(f"{loc}: {msg}{shown}")
    return "; ".join(messages)


def _field_names_at(loc: tuple) -> list[str]:
    """The field names of the recipe section at `loc`, for 'did you mean' suggestions."""
    from toolkit.recipe import Recipe

    model: type[BaseModel] = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _section_type(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None
