"""What a finished run folder recorded in its report.json, for the commands that use the run later (export, chat):
the base model it trained (`model_path`) and the prompt it was asked with (`recipe.prompt`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from toolkit.models import PACKAGED_PREFIX, ModelError
from toolkit.recipe import PromptSection, Recipe
from toolkit.verify import ExportError

logger = logging.getLogger(__name__)


def base_model_path(recipe: Recipe, run_dir: Path, resolve: bool = True) -> str:
    """The base the run trained: report.json's `model_path` when the run finished, else the recipe's model. With
    `resolve` false, that name as recorded, neither checked nor converted (an export that never loads the base)."""
    from toolkit.models import resolve_model

    report = run_dir / "report.json"
    found = run_report(run_dir)
    if found is not None:
        path = found.get("model_path")
        if path is not None:
            # A hand-edited or foreign report must not send a number or a list to the hub as a repo id.
            if not isinstance(path, str) or not path.strip():
                raise ExportError(f"{report}: model_path must be a model folder or hub id, got {path!r}")
            if not resolve:
                return path
            try:
                return resolve_model(path)
            except ModelError as err:
                if os.path.lexists(path):  # there but broken: nothing to make again
                    raise ExportError(f"{report}: model_path: {err}") from None
                return _gone_base_again(recipe, report, found, path, err)
    if not resolve:  # an unfinished run: the adapter says what it was trained on, the recipe may not
        from toolkit.checkpoints import adapter_config

        named = (adapter_config(run_dir / "adapter") or {}).get("base_model_name_or_path")
        return named if isinstance(named, str) and named.strip() else recipe.model.name_or_path
    return resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)


def run_report(run_dir: Path) -> dict | None:
    """The run's report.json, None when there is none (a run interrupted before its end); an unreadable one, or
    one that is not a JSON object, is an error naming it."""
    report = run_dir / "report.json"
    if not report.is_file():
        return None
    try:
        found = json.loads(report.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ExportError(f"{report}: unreadable run report ({err})") from err
    if not isinstance(found, dict):
        raise ExportError(f"{report}: not a run report (a JSON object), got {type(found).__name__}")
    return found


def prompt_differences(recipe: Recipe, run_dir: Path) -> list[tuple[str, object, object]]:
    """The `prompt` fields in which `recipe` differs from the prompt the run trained with, as its report.json
    records it (`recipe`, dumped as JSON by toolkit.run): (dotted name, the run's value, this recipe's value) each.
    The prompt decides how the model is asked, and open_think even its chat template, so a recipe loaded without
    the run's overrides would ask it otherwise. Nothing to compare with (an interrupted run has no report, a
    hand-made one may have no recipe): []."""
    found = run_report(run_dir)
    recorded = found.get("recipe") if found is not None else None
    ran = recorded.get("prompt") if isinstance(recorded, dict) else None
    if not isinstance(ran, dict):
        return []
    differences = []
    for name, value in recipe.prompt.model_dump(mode="json").items():
        field = PromptSection.model_fields[name]
        if name not in ran and field.is_required():
            continue
        # A field the report lacks was not in the toolkit that wrote it: that run had the field's default.
        before = ran[name] if name in ran else field.get_default(call_default_factory=True)
        if before != value:
            differences.append((f"prompt.{name}", before, value))
    return differences


def prompt_mismatch(differences: list[tuple[str, object, object]], command: str) -> str:
    """`prompt_differences` in one line: the first field with both values, the others by name, and the overrides
    to `command` with that give the run's prompt back (a long value is not repeated: report.json holds it)."""
    name, before, value = differences[0]
    others = f" (and {', '.join(other for other, _, _ in differences[1:])})" if differences[1:] else ""
    overrides = ", ".join(f"{field}={_json(ran)}" if len(_json(ran)) <= SHOWN else f"{field} as report.json's recipe"
                          for field, ran, _ in differences)
    return (f"{name} is {_shown(before)} in the run (report.json) but {_shown(value)} here{others}: {command} with "
            f"the overrides the run trained with ({overrides})")


SHOWN = 60  # characters of a value in a message: a system prompt or worked examples are longer


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # as in report.json, and as an override reads it: true, "…", [...]


def _shown(value: object) -> str:
    text = _json(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _gone_base_again(recipe: Recipe, report: Path, found: dict, path: str, err: ModelError) -> str:
    """A run's base folder that is gone: a packaged model's conversion lives in a cache (model_path), and a cleared
    cache or another XDG_CACHE_HOME must not strand the run. The report's recipe names the packaged model, which
    converts again into the current cache; any other base is the user's to put back."""
    from toolkit.models import resolve_model

    recorded = found.get("recipe")
    model = recorded.get("model") if isinstance(recorded, dict) else None
    name = model.get("name_or_path") if isinstance(model, dict) else None
    if not isinstance(name, str) or not name.startswith(PACKAGED_PREFIX):
        raise ExportError(f"{report}: model_path: {err}; the run trained that base model, and it is gone (a model "
                          "cache cleared or moved?): put it back, or set model_path to where it is now") from None
    try:
        again = resolve_model(name, recipe.model.cache_dir)
    except ModelError as again_err:
        raise ExportError(f"{report}: model_path: {err}, and the run's {name} cannot be made again: {again_err}") \
            from None
    logger.info("%s: the run's base model %s is gone (a model cache cleared or moved?); using %s made again from "
                "its package: %s", report, path, name, again)
    # The cache folder's name holds the package version and conversion revision: another one may hold other weights.
    if Path(again).name != Path(path).name:
        logger.warning("%s: the run trained %s as %s, but it is now %s (another package version or conversion): "
                       "the adapter may not fit it", report, name, Path(path).name, Path(again).name)
    return again


def warn_if_asked_otherwise(recipe: Recipe, adapter: Path, command: str) -> None:
    """Log a warning when `recipe`'s prompt is not the one the adapter's run trained with: the run holding it as
    adapter/, as export/adapter or as trainer/checkpoint-N. A warning, not an error: asking a trained adapter another
    way can be the point (chat, evaluate)."""
    run = adapter.parent.parent if adapter.parent.name in ("export", "trainer") else adapter.parent
    differences = prompt_differences(recipe, run)
    if differences:
        logger.warning("asking the model unlike its training: %s", prompt_mismatch(differences, command))
