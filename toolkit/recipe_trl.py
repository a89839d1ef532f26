"""Recipe checks about TRL's `GRPOConfig`: the `training.trl` passthrough and the generation batch.

`training.trl` carries any GRPOConfig field the recipe does not map itself (`optim`, `max_grad_norm`,
`report_to`, ...). Its keys are checked against the real dataclass fields when the recipe loads, so a typo fails
before any model loads; a field the recipe maps (`learning_rate`, ...) is refused with the recipe field to use
instead, so one setting never has two places. TRL is imported only when `training.trl` is not empty, and through
`toolkit.backends.import_trl`, which keeps Unsloth ahead of TRL on the Unsloth path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import TYPE_CHECKING

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from toolkit.recipe import Recipe, TrainingSection

# GRPOConfig fields set from outside the training section.
MAPPED_ELSEWHERE = {"output_dir": "output_dir", "reward_weights": "each reward's `weight` in rewards"}


def grpo_config_fields(backend: str = "auto") -> set[str]:
    from toolkit.backends import import_trl

    trl = import_trl(backend)
    return {field.name for field in dataclasses.fields(trl.GRPOConfig)}


def mapped_fields(known: set[str]) -> dict[str, str]:
    """GRPOConfig field → the recipe field that sets it. Training-section fields map onto GRPOConfig fields of the
    same name (see toolkit.train.grpo_config), so the table follows the schema as it grows."""
    from toolkit.recipe import TrainingSection

    names = {name: f"training.{name}" for name in TrainingSection.model_fields if name in known}
    return names | MAPPED_ELSEWHERE


def check_trl_passthrough(recipe: Recipe) -> None:
    """Raise a ValidationError located at `training.trl.<key>` for each key GRPOConfig lacks or the recipe maps."""
    if not recipe.training.trl:
        return
    known = grpo_config_fields(recipe.model.backend)
    mapped = mapped_fields(known)
    problems = []
    for key, value in recipe.training.trl.items():
        if key in mapped:
            reason = f"set by the recipe, not here: use {mapped[key]}"
        elif key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            if not close:
                hint = "see the trl.GRPOConfig documentation for its fields"
            elif close[0] in mapped:
                hint = f"did you mean {mapped[close[0]]}?"
            else:
                hint = f"did you mean {close[0]!r}?"
            reason = f"not a trl.GRPOConfig field ({hint})"
        else:
            continue
        # The reason goes in as context, not as the template, so braces in a key cannot break the formatting.
        error = PydanticCustomError("trl_field", "{reason}", {"reason": reason})
        problems.append(InitErrorDetails(type=error, loc=("training", "trl", key), input=value))
    if problems:
        # Raised as a ValidationError, not a ValueError, so each problem keeps its own `training.trl.<key>` path.
        raise ValidationError.from_exception_data("Recipe", problems)


def generation_batch_problem(training: TrainingSection) -> str | None:
    """Why the completions generated per step do not split into whole GRPO groups, and the fix; None if they do."""
    groups = training.num_generations
    trl = training.trl
    steps = trl.get("steps_per_generation") or training.gradient_accumulation_steps
    if isinstance(trl.get("generation_batch_size"), int):
        batch, source = trl["generation_batch_size"], "training.trl.generation_batch_size"
    elif isinstance(steps, int):
        batch = training.per_device_train_batch_size * steps
        what = "steps_per_generation" if trl.get("steps_per_generation") else "gradient_accumulation_steps"
        source = f"per_device_train_batch_size × {what}"
    else:
        return None  # a malformed value: GRPOConfig itself reports it
    if batch % groups == 0:
        return None
    if source.startswith("training.trl"):
        fix = f"set {source} to {-(-batch // groups) * groups}"
    else:
        unit = groups // math.gcd(steps, groups) if steps > 0 else groups
        divisors = [d for d in range(min(groups, batch), 1, -1) if batch % d == 0]
        fix = f"set per_device_train_batch_size to {-(-training.per_device_train_batch_size // unit) * unit}" + (
            f", or num_generations to {divisors[0]}" if divisors else ""
        )
    return (
        f"the generation batch ({source} = {batch}) must be divisible by num_generations ({groups}): each question "
        f"gets num_generations completions (one GRPO group) and a step generates whole groups; {fix}"
    )
