"""Checkpoints of a run and what `python -m toolkit.run RECIPE --resume` continues from.

The trainer writes `<output_dir>/trainer/checkpoint-N` every `training.save_steps` steps (adapter, optimizer,
scheduler, RNG state and `trainer_state.json` with the log history so far). transformers writes
`trainer_state.json` last, so a checkpoint without a readable one was cut short by a kill and is skipped.

The base columns of the evaluation (no context, base + RAG) are computed before training and take about a third of
a CPU run. They are kept in `<output_dir>/trainer/base_eval.json` with a key of everything they depend on (model,
eval, prompt, retrieval and reward settings and the eval rows), so a resumed run reuses them when nothing changed
and evaluates again when something did. Greedy decoding makes the recomputed numbers the same anyway.

Only standard-library imports: `--resume` without a checkpoint must fail at once, before torch loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from toolkit.report import remove_whole, write_atomic

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
BASE_EVAL = "base_eval.json"
STATE = "trainer_state.json"
OPTIMIZER_RECORD = "OptimizerRecord"  # toolkit.train's callback, by the class name transformers files it under


class CheckpointError(ValueError):
    """`--resume` with nothing to resume from; the message is one line saying where it looked and what to do."""


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every checkpoint folder under `folder`, complete or not, in step order."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT.fullmatch(p.name))]
    return sorted(found)


def complete(path: Path) -> bool:
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    for _, path in reversed(checkpoints(folder)):
        if complete(path):
            return path
        logger.warning("skipping %s: no readable %s (the run was killed while saving it)", path, STATE)
    return None


def resume_checkpoint(folder: Path, max_steps: int) -> Path:
    """The checkpoint `--resume` continues from; CheckpointError when there is none, or when it is past
    `max_steps` (training.max_steps): its adapter holds more training than the recipe asks for."""
    path = latest_checkpoint(folder)
    if path is None:
        raise CheckpointError(
            f"--resume: no complete checkpoint in {folder} (checkpoint-N folders appear every training.save_steps "
            "steps; set it to write them, or run without --resume to start over)"
        )
    for file in sorted(path.iterdir()):
        problem = damaged(file)
        if problem:
            raise CheckpointError(
                f"--resume: {file} is damaged ({problem}); delete {path} to resume from the checkpoint before it, "
                "or run without --resume to start over"
            )
    lacking = missing(path)
    if lacking:
        raise CheckpointError(
            f"--resume: {path} has no {lacking}; delete {path} to resume from the checkpoint before it, or run "
            "without --resume to start over"
        )
    step = resumed_step(path)
    if step > max_steps:
        raise CheckpointError(
            f"--resume: {path} is at step {step}, past training.max_steps {max_steps}; raise training.max_steps "
            f"to at least {step}, or run without --resume to start over"
        )
    logger.info("resuming from %s (step %d of %d)", path, step, max_steps)
    return path


# What transformers reads back on resume, each as one of its names. Without the adapter's weights or config it
# fails with a traceback after the base evaluation; without the others it starts afresh without a word: a new
# optimizer (Adam's moments lost), the schedule from step 0, the RNG not where the run left it.
NEEDED = (("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin"), ("optimizer.pt",),
          ("scheduler.pt",), ("rng_state.pth", "rng_state_0.pth"))


def missing(checkpoint: Path) -> str | None:
    """The first file of `NEEDED` a checkpoint lacks (deleted by hand, or lost in a copy), else None."""
    for names in NEEDED:
        if not any((checkpoint / name).is_file() for name in names):
            return names[0]
    return None


def resumed_step(checkpoint: Path) -> int:
    """The step a complete checkpoint was saved at."""
    step = json.loads((checkpoint / STATE).read_text(encoding="utf-8"))["global_step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:  # hand-edited: int() raised a traceback
        raise CheckpointError(f"--resume: {checkpoint / STATE}: global_step must be a step number, got {step!r}; "
                              f"delete {checkpoint} to resume from the checkpoint before it, or run without --resume "
                              "to start over")
    return step


def adapter_config(folder: Path) -> dict | None:
    """An adapter folder's (or checkpoint's) adapter_config.json as peft saved it; None when unreadable."""
    try:
        saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def check_same_lora(checkpoint: Path, lora, linear: list[str] | None = None) -> None:
    """CheckpointError when the checkpoint's adapter was made with other LoRA settings than `lora` (the recipe's
    training.lora): loading it would fail deep in torch with a size mismatch or an optimizer-group error.

    Targets are compared by module name (`q_proj`): peft saves "all-linear" resolved to dotted names. A recipe's
    "all-linear" is compared only when `linear` gives the loaded model's linear layers it stands for."""
    saved = adapter_config(checkpoint)
    if saved is None:
        return  # no readable config: the trainer reports what it lacks
    wanted = {"r": lora.r, "lora_alpha": lora.alpha, "layers_to_transform": lora.layers_to_transform}
    targets = lora.target_modules if isinstance(lora.target_modules, list) else linear
    if targets is not None and isinstance(saved.get("target_modules"), list):
        wanted["target_modules"] = sorted({str(t).rsplit(".", 1)[-1] for t in targets})
        saved["target_modules"] = sorted({str(t).rsplit(".", 1)[-1] for t in saved["target_modules"]})
    names = {"r": "r", "lora_alpha": "alpha", "layers_to_transform": "layers_to_transform",
             "target_modules": "target_modules"}
    for key, value in wanted.items():
        if saved.get(key) != value:
            asked = repr(value)
            if key == "target_modules" and not isinstance(lora.target_modules, list):
                asked = f"{lora.target_modules!r} (here {asked})"
            raise CheckpointError(
                f"--resume: {checkpoint} was trained with training.lora.{names[key]} {saved.get(key)!r}, the recipe "
                f"asks for {asked}; resume with the same LoRA settings, or run without --resume to start over"
            )


def check_same_base(checkpoint: Path, model_path: str, packaged: bool = False) -> None:
    """CheckpointError when the checkpoint's adapter was trained on another base model than `model_path` (the
    recipe's, resolved): loading it fails in torch with a size mismatch per weight, hundreds of lines. Two local
    folders are compared as real paths and two hub ids as names; a saved folder that is gone (a cleared model
    cache) cannot be compared and is let through. `packaged`: the recipe names a packaged model, whose conversion
    folder's name (model, package version, conversion revision) is the model wherever the cache is."""
    base = (adapter_config(checkpoint) or {}).get("base_model_name_or_path")
    if not isinstance(base, str) or not base or base == str(model_path):
        return
    here, there = Path(model_path).expanduser(), Path(base).expanduser()
    if packaged and here.name == there.name:
        return  # the same conversion in another cache (XDG_CACHE_HOME, model.cache_dir)
    if here.exists() and there.exists():
        differs = here.resolve() != there.resolve()
    else:
        differs = not here.exists() and not there.exists() and not there.is_absolute()  # two hub ids
    if differs:
        raise CheckpointError(f"--resume: {checkpoint} was trained on the base model {base}, the recipe's model is "
                              f"{model_path}; resume with the same model.name_or_path, or run without --resume")


# What a resumed run takes from the checkpoint, not from the recipe: the optimizer's state and param groups
# (transformers loads them over the new optimizer's) and the scheduler's base rates. A changed value would be
# ignored while the report showed it. And the RNG state, while the data order comes from the seed: resumed under
# another seed, the trainer skips the trained batches of another order, so some questions train twice in the
# epoch and others never. Recipe field of each GRPOConfig name, for the message.
RESTORED = {"optim": "training.trl.optim", "learning_rate": "training.learning_rate",
            "weight_decay": "training.trl.weight_decay", "adam_beta1": "training.trl.adam_beta1",
            "adam_beta2": "training.trl.adam_beta2", "adam_epsilon": "training.trl.adam_epsilon",
            "seed": "training.seed"}


def check_same_optimizer(checkpoint: Path, settings: dict) -> None:
    """CheckpointError when the checkpoint's optimizer was made with other settings (`RESTORED`) than `settings`
    (the GRPOConfig's, after training.trl). Another optimizer loads and then fails at the first step (adamw to sgd:
    `KeyError: 'momentum'`); another learning rate would be silently replaced by the checkpoint's. The values are in
    trainer_state.json, kept there by toolkit.train's OptimizerRecord; one a checkpoint lacks is not checked."""
    try:
        state = json.loads((checkpoint / STATE).read_text(encoding="utf-8"))
        saved = state["stateful_callbacks"][OPTIMIZER_RECORD]["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(saved, dict):
        return
    for key, field in RESTORED.items():
        if key in saved and key in settings and saved[key] != settings[key]:
            raise CheckpointError(
                f"--resume: {checkpoint} was trained with {field} {saved[key]!r}, the recipe asks for "
                f"{settings[key]!r}; resume with the same {'seed' if key == 'seed' else 'optimizer settings'}, or run "
                "without --resume to start over"
            )


def _starts_with(file: Path, magic: bytes) -> bool:
    with file.open("rb") as f:  # not read_bytes(), which would hold the whole file in memory for two bytes
        return f.read(len(magic)) == magic


def damaged(file: Path) -> str | None:
    """Why a checkpoint's weights or optimizer file cannot be read back (None: it can, or it is another kind).
    Checked before anything loads: a truncated file otherwise fails in torch or safetensors with a traceback,
    after the base evaluation. Both formats can be checked without them: torch's .pt/.pth files are zip
    archives with CRCs, and a .safetensors file is a length-prefixed JSON header whose offsets cover the file."""
    try:
        if file.name == "adapter_config.json":
            return None if isinstance(json.loads(file.read_text(encoding="utf-8")), dict) else "not a JSON object"
        if file.suffix in (".pt", ".pth") or (file.suffix == ".bin" and _starts_with(file, b"PK")):
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            return f"member {bad} fails its CRC check" if bad else None
        if file.suffix == ".safetensors":
            with file.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size)) if 0 < size <= file.stat().st_size - 8 else None
            if not isinstance(header, dict):
                return "no safetensors header"
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if 8 + size + end != file.stat().st_size:
                return f"{file.stat().st_size} bytes where its header describes {8 + size + end}"
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def start_fresh(folder: Path) -> None:
    """A run without --resume starts over: checkpoints of an earlier run would otherwise be rotated in among the
    new ones (the trainer keeps the highest steps, so an old checkpoint-20 would outlive a new checkpoint-2) and
    picked by a later --resume."""
    old = checkpoints(folder)
    for _, path in old:
        try:  # as toolkit.run removes the earlier adapter: never left half removed
            remove_whole(path)
        except OSError as err:  # not the user's to read as a traceback: a folder of another user's, a busy mount
            raise CheckpointError(f"output_dir: cannot remove the earlier run's checkpoint {path} "
                                  f"({err.strerror or err}); move it away or set another output_dir") from None
    if old:
        logger.info("removed %d checkpoint(s) of an earlier run from %s (use --resume to continue a run instead)",
                    len(old), folder)


# What each part of the eval key stands for, as the log names a changed one.
KEY_PARTS = {"model": "the base model (its path or its files)", "backend": "the backend",
             "rows": "the eval questions or their retrieved context", "reward_code": "a custom reward's code",
             **{f"recipe.{name}": f"the recipe's {name} section" for name in ("model", "prompt", "retrieval",
                                                                             "rewards", "eval")}}


def eval_key(recipe, model_path: str, rows: list[dict], backend: str) -> dict[str, str]:
    """A hash of each thing the base columns depend on (KEY_PARTS), so that the log can say which one changed.
    `backend`: the one that runs, not the recipe's `auto` (a CPU run resumed on a GPU box evaluates with Unsloth's
    4-bit model, which answers differently). A local model's files count, not only its path: weights replaced in
    place answer differently (their modification times count too, so a copy made without them evaluates again)."""
    from toolkit.models import folder_fingerprint

    sections = recipe.model_dump(mode="json", include={"model", "prompt", "retrieval", "rewards", "eval"})
    parts = {"model": [str(model_path), folder_fingerprint(str(model_path), with_times=True)], "backend": backend,
             "rows": rows, "reward_code": _reward_code(recipe),
             **{f"recipe.{name}": value for name, value in sections.items()}}
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
            for name, value in sorted(parts.items())}


def _reward_code(recipe) -> dict[str, str]:
    """A digest of each custom reward's code: a reward edited between two runs scores the base columns otherwise,
    and reusing the old ones would credit the edit to training. The file the recipe names (`x.py:fn`) or the
    module's (`pkg.mod:fn`), whatever the function is (a callable object, a partial, a decorated function whose
    wrapper lives elsewhere), and the local modules it imports (`rewards.custom.source_files`). Not a reward
    model's or embedder's weights replaced in place."""
    from toolkit.rewards.custom import is_custom, source_digest

    # Imported with the recipe already, so its helpers are loaded.
    return {reward.name: source_digest(reward.name) for reward in recipe.rewards if is_custom(reward.name)}


def base_results(folder: Path, key: dict | str, resume: bool, evaluate: Callable[[], dict]) -> dict:
    """The base columns: on --resume the earlier run's when `key` matches, else `evaluate()` (then kept)."""
    path = folder / BASE_EVAL
    if resume:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            why = "the recipe or eval data changed since the earlier run"
        except FileNotFoundError:
            saved, why = None, f"no saved base evaluation in {folder}"
        except (OSError, ValueError) as err:
            saved, why = None, f"{path} is unreadable ({str(err).splitlines()[0]})"
        if isinstance(saved, dict) and saved.get("key") == key:
            logger.info("reusing the base evaluation of the earlier run (%s)", path)
            return saved["results"]
        if isinstance(saved, dict) and isinstance(key, dict):
            if isinstance(saved.get("key"), str):
                why = "the earlier run's base evaluation was saved by an older version of the toolkit"
            elif isinstance(saved.get("key"), dict):
                changed = [KEY_PARTS.get(name, name) for name in sorted(set(key) | set(saved["key"]))
                           if key.get(name) != saved["key"].get(name)]
                why = f"changed since the earlier run: {', '.join(changed)}"
        if saved is not None and not isinstance(saved, dict):
            why = f"{path} is not a saved evaluation"
        logger.info("evaluating the base columns again: %s", why)
    results = evaluate()
    try:
        write_atomic(path, json.dumps({"key": key, "results": results}))
    except OSError as err:  # a full disk after the base evaluation: one line, not a traceback
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None
    return results
