"""Recipe checks about TRL's `GRPOConfig`: the `training.trl` passthrough, the generation batch and the length
reward's overlong limit against the generation limit.

`training.trl` carries any GRPOConfig field the recipe does not map itself (`optim`, `max_grad_norm`,
`report_to`, ...). Its keys are checked against the real dataclass fields when the recipe loads, so a typo fails
before any model loads; a field the recipe maps (`learning_rate`, ...) is refused with the recipe field to use
instead, so one setting never has two places. TRL is imported only when `training.trl` is not empty, and through
`toolkit.backends.import_trl`, which keeps Unsloth ahead of TRL on the Unsloth path.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import types
import typing
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from toolkit.recipe import Recipe, TrainingSection

logger = logging.getLogger(__name__)

# GRPOConfig fields set from outside the training section.
MAPPED_ELSEWHERE = {"output_dir": "output_dir", "reward_weights": "each reward's `weight` in rewards"}


def grpo_config_fields(backend: str = "auto") -> set[str]:
    return set(grpo_config_types(backend))


def grpo_config_types(backend: str = "auto") -> dict[str, Any]:
    """GRPOConfig field → its type (`Any` where the annotations cannot be resolved, e.g. a patched class)."""
    from toolkit.backends import import_trl

    config = import_trl(backend).GRPOConfig
    try:
        hints = typing.get_type_hints(config)
    except Exception as err:  # noqa: BLE001 - the names are what matters; GRPOConfig still checks the values
        logger.debug("cannot resolve %s's type hints (%s): training.trl values are passed as given", config, err)
        hints = {}
    return {field.name: hints.get(field.name, Any) for field in dataclasses.fields(config)}


SCALARS = {bool: "true or false", int: "a whole number", float: "a number"}
# Values GRPOConfig accepts but the run cannot honour, each refused with the reason: field → (refused?, reason).
# The toolkit passes GRPOTrainer no eval_dataset (the eval split is evaluated after training, by the eval
# section); transformers finds that only when training starts, and some of these it never reports at all.
NO_EVAL_DATASET = ("GRPOTrainer gets no eval_dataset here: the eval split is evaluated after training (the eval "
                   "section)")
REFUSED_VALUES = {
    "eval_strategy": (lambda v: v in ("steps", "epoch"), f"{NO_EVAL_DATASET}; leave it out"),
    "do_eval": (lambda v: v is True, NO_EVAL_DATASET),
    "eval_on_start": (lambda v: v is True, NO_EVAL_DATASET),
    # Accepted by transformers without an evaluation and then unused: a setting that silently does nothing.
    "eval_steps": (lambda v: v is not None, f"{NO_EVAL_DATASET}; leave it out"),
    "eval_delay": (lambda v: bool(v), f"{NO_EVAL_DATASET}; leave it out"),
    "eval_accumulation_steps": (lambda v: v is not None, f"{NO_EVAL_DATASET}; leave it out"),
    "prediction_loss_only": (lambda v: v is True, f"{NO_EVAL_DATASET}; leave it out"),
    "num_generations_eval": (lambda v: v is not None, f"{NO_EVAL_DATASET}, greedily; leave it out"),
    "per_device_eval_batch_size": (lambda v: True, f"{NO_EVAL_DATASET}, in batches of eval.batch_size: set that"),
    "metric_for_best_model": (lambda v: v is not None, f"there is no evaluation during training to pick a best "
                                                       f"checkpoint by: {NO_EVAL_DATASET}"),
    "greater_is_better": (lambda v: v is not None, f"there is no evaluation during training to pick a best "
                                                   f"checkpoint by: {NO_EVAL_DATASET}"),
    "fsdp": (lambda v: bool(v), "FSDP needs distributed training (torchrun over several devices); the toolkit "
                                "trains on one device"),
    "save_strategy": (lambda v: v == "best", f"'best' needs an evaluation during training; {NO_EVAL_DATASET}"),
    "load_best_model_at_end": (lambda v: v is True, f"there is no best model to load: {NO_EVAL_DATASET}"),
    "save_only_model": (lambda v: v is True, "its checkpoints would lack the optimizer, scheduler and RNG state "
                                             "that --resume restores"),
    "resume_from_checkpoint": (lambda v: v is not None, "pass --resume to toolkit.run instead: it continues from the "
                                                        "latest checkpoint in <output_dir>/trainer, checked first"),
    # TrainingArguments: max_steps, which the recipe always sets (training.max_steps), overrides it without a word.
    "num_train_epochs": (lambda v: True, "training.max_steps sets the length of training and overrides it; set that"),
    # Would drop every dataset column but the prompt: the rewards then get no answer, context, ... and score None,
    # the loss is 0 and the run learns nothing (TRL only logs a warning).
    "remove_unused_columns": (lambda v: v is True, "the rewards read the dataset's other columns (answer, aliases, "
                                                   "context, ...); without them they score nothing and nothing is "
                                                   "learned"),
    "push_to_hub": (lambda v: v is True, "the run saves its adapter in <output_dir>/adapter; export it (python -m "
                                         "toolkit.export) and upload that"),
}
# training.trl.generation_kwargs keys TRL lets override the recipe's own sampling settings without a word (transformers'
# GenerationConfig and vLLM's SamplingParams names): the loss would still scale the logits by training.temperature.
GENERATION_KWARGS_MAPPED = {"temperature": "training.temperature", "top_p": "training.top_p",
                            "max_new_tokens": "training.max_completion_length",
                            "max_tokens": "training.max_completion_length"}
# chat_template_kwargs reach only TRL's sampling prompts: the evaluation, toolkit.chat and the export render the
# template without them, so the model would be scored on prompts it was not trained on.
CHAT_TEMPLATE_KWARGS = ("only TRL's training prompts would get them: the evaluation, toolkit.chat and the exported "
                        "model render the chat template without them, so the model would be scored on other prompts")
# Schedules transformers builds without `lr_scheduler_kwargs`, dropping them without a word.
NO_SCHEDULER_KWARGS = ("constant", "constant_with_warmup")
# Counts GRPOConfig takes without checking them: 0 trains nothing (exit 0), a negative fails deep in torch's sampler.
AT_LEAST_ONE = ("num_iterations", "steps_per_generation", "generation_batch_size")


def coerced(key: str, value: Any, kind: Any) -> tuple[Any, str | None]:
    """`value` converted for a number or boolean field (pydantic's lax rules, as for the recipe's own fields: YAML
    reads `1e-2` as a string, which GRPOConfig would keep as one until the optimizer fails on it), or the reason it
    cannot be. Other fields are left alone: transformers' hints are narrower than what it accepts (`fsdp: false`
    for a `str | None` field)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    enum = next((t for t in options if isinstance(t, type) and issubclass(t, Enum)), None)
    if enum is not None:  # `optim: OptimizerNames | str`: TrainingArguments converts it only when training starts
        if value is False and "no" in [str(member.value) for member in enum]:
            return "no", None  # YAML 1.1 reads an unquoted `no` as false: `save_strategy: no` means "no"
        return value, _enum_problem(value, enum)
    scalar = [t for t in options if t is not type(None)]
    if value is None or len(scalar) != 1 or scalar[0] not in SCALARS or type(value) is scalar[0]:
        return value, None
    try:
        return TypeAdapter(kind).validate_python(value), None
    except ValidationError as err:
        return value, f"{err.errors()[0]['msg']} (trl.GRPOConfig.{key} takes {SCALARS[scalar[0]]})"


def _enum_problem(value: Any, enum: type[Enum]) -> str | None:
    allowed = [str(member.value) for member in enum]
    if isinstance(value, enum) or (isinstance(value, str) and value in allowed):
        return None
    close = difflib.get_close_matches(str(value), allowed, n=1)
    more = ", ..." if len(allowed) > 6 else ""
    hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(allowed[:6])}{more}"
    return f"not a valid {enum.__name__} ({hint})"


def plain_value(value: Any) -> Any:
    """An enum member's value (`IntervalStrategy.NO` → "no"); anything else as it is."""
    return value.value if isinstance(value, Enum) else value


def mapped_fields(known: set[str]) -> dict[str, str]:
    """GRPOConfig field → the recipe field that sets it. Training-section fields map onto GRPOConfig fields of the
    same name (see toolkit.train.grpo_config), so the table follows the schema as it grows."""
    from toolkit.recipe import TrainingSection

    names = {name: f"training.{name}" for name in TrainingSection.model_fields if name in known}
    return names | MAPPED_ELSEWHERE


def check_trl_passthrough(recipe: Recipe) -> None:
    """Raise a ValidationError located at `training.trl.<key>` for each key GRPOConfig lacks, the recipe maps, or
    whose value is not of the field's type; values that convert (`"1e-2"` for a float) are converted in place."""
    if not recipe.training.trl:
        return
    field_types = grpo_config_types(recipe.model.backend)
    known = set(field_types)
    mapped = mapped_fields(known)
    problems = []
    for key, value in recipe.training.trl.items():
        if key in known and key not in mapped:
            recipe.training.trl[key], reason = coerced(key, value, field_types[key])
            if reason is None and key in AT_LEAST_ONE and isinstance(recipe.training.trl[key], int) \
                    and recipe.training.trl[key] < 1:
                reason = "must be at least 1"
            refused = REFUSED_VALUES.get(key)
            if reason is None and refused is not None and refused[0](plain_value(recipe.training.trl[key])):
                reason = refused[1]
            if reason is None and key == "save_strategy" and plain_value(recipe.training.trl[key]) == "steps" \
                    and recipe.training.save_steps is None:
                # Without training.save_steps transformers' save_steps is 500: no checkpoint in a run this short.
                reason = "set training.save_steps instead: it turns on a checkpoint every N steps, keeping the last two"
            if reason is None and key == "generation_kwargs":
                reason = generation_kwargs_problem(recipe.training.trl[key])
            if reason is None and key == "chat_template_kwargs" and recipe.training.trl[key]:
                reason = CHAT_TEMPLATE_KWARGS
            if reason is None and key == "lr_scheduler_kwargs" and value \
                    and recipe.training.lr_scheduler_type in NO_SCHEDULER_KWARGS:
                reason = (f"training.lr_scheduler_type {recipe.training.lr_scheduler_type} takes no settings, so "
                          f"these would be ignored; leave it out or pick a schedule that takes them")
            if reason is None:
                continue
        elif key in mapped:
            reason = f"set by the recipe, not here: use {mapped[key]}"
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            if not close:
                hint = "see the trl.GRPOConfig documentation for its fields"
            elif close[0] in mapped:
                hint = f"did you mean {mapped[close[0]]}?"
            else:
                hint = f"did you mean {close[0]!r}?"
            reason = f"not a trl.GRPOConfig field ({hint})"
        # The reason goes in as context, not as the template, so braces in a key cannot break the formatting.
        error = PydanticCustomError("trl_field", "{reason}", {"reason": reason})
        problems.append(InitErrorDetails(type=error, loc=("training", "trl", key), input=value))
    if problems:
        # Raised as a ValidationError, not a ValueError, so each problem keeps its own `training.trl.<key>` path.
        raise ValidationError.from_exception_data("Recipe", problems)


def generation_kwargs_problem(value: Any) -> str | None:
    """Why training.trl.generation_kwargs cannot be used as given: a key that would override a recipe field (TRL
    lets generation_kwargs win over its own sampling settings), or do_sample off (GRPO compares sampled replies)."""
    if isinstance(value, str):  # GRPOConfig reads a JSON string as the dict
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if value is None:
        return None
    if not isinstance(value, dict):  # GRPOConfig keeps it; GRPOTrainer fails on it when built, after the base eval
        return "must be a mapping of generation settings, e.g. {suppress_tokens: [3]}"
    clashes = [f"{key} (use {GENERATION_KWARGS_MAPPED[key]})" for key in value if key in GENERATION_KWARGS_MAPPED]
    if clashes:
        return f"set by the recipe, not here: {', '.join(clashes)}"
    if value.get("do_sample", True) is not True:
        return ("do_sample must stay true: GRPO learns from the differences between a group's sampled replies, and "
                "greedy ones are all the same")
    return None


def check_overlong_limits(recipe: Recipe) -> None:
    """Raise a ValidationError at `rewards.<i>.params.max_completion_length` for a length reward whose overlong
    limit is above training.max_completion_length: a completion cut at the generation limit would keep part of its
    reward, and the penalty would never reach 0, against its definition (docs/rewards.md)."""
    limit = recipe.training.max_completion_length
    problems = []
    for i, spec in enumerate(recipe.rewards):
        value = spec.params.get("max_completion_length") if spec.name == "length" else None
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            reason = (f"above training.max_completion_length ({limit}), so a completion cut there would keep part "
                      f"of its reward; set it to {limit}")
            error = PydanticCustomError("overlong_limit", "{reason}", {"reason": reason})
            problems.append(InitErrorDetails(type=error, loc=("rewards", i, "params", "max_completion_length"),
                                             input=value))
    if problems:
        raise ValidationError.from_exception_data("Recipe", problems)


def count(value: Any) -> int | None:
    """A whole number as check_trl_passthrough will convert it (`10`, `10.0`, `"10"`), else None."""
    try:
        return TypeAdapter(int).validate_python(value) if value is not None and not isinstance(value, bool) else None
    except ValidationError:
        return None


def generation_batch_problem(training: TrainingSection) -> str | None:
    """Why the completions generated per step do not split into whole GRPO groups, and the fix; None if they do."""
    groups, per_device = training.num_generations, training.per_device_train_batch_size
    trl = training.trl
    if trl.get("generation_batch_size") is not None and trl.get("steps_per_generation") is not None:
        return ("training.trl sets both generation_batch_size and steps_per_generation: TRL takes one or the other "
                "(generation_batch_size = per_device_train_batch_size × steps_per_generation)")
    asked_steps, asked_batch = count(trl.get("steps_per_generation")), count(trl.get("generation_batch_size"))
    if trl.get("steps_per_generation") is not None and asked_steps is None:
        return None  # a malformed value: check_trl_passthrough or GRPOConfig reports it
    steps = asked_steps or training.gradient_accumulation_steps
    if asked_batch is not None:
        # TRL also splits it into whole training batches, so it must divide by both.
        batch, unit = asked_batch, math.lcm(groups, per_device)
        if batch % unit == 0:
            return None
        return (
            f"the generation batch (training.trl.generation_batch_size = {batch}) must be divisible by "
            f"num_generations ({groups}) and by per_device_train_batch_size ({per_device}): each question gets "
            f"num_generations completions (one GRPO group), a step generates whole groups and trains on whole "
            f"batches; set training.trl.generation_batch_size to {-(-batch // unit) * unit}"
        )
    batch = per_device * steps
    what = "steps_per_generation" if trl.get("steps_per_generation") else "gradient_accumulation_steps"
    source = f"per_device_train_batch_size × {what}"
    if batch % groups == 0:
        return None
    unit = groups // math.gcd(steps, groups) if steps > 0 else groups
    divisors = [d for d in range(min(groups, batch), 1, -1) if batch % d == 0]
    fix = f"set per_device_train_batch_size to {-(-per_device // unit) * unit}" + (
        f", or num_generations to {divisors[0]}" if divisors else ""
    )
    return (
        f"the generation batch ({source} = {batch}) must be divisible by num_generations ({groups}): each question "
        f"gets num_generations completions (one GRPO group) and a step generates whole groups; {fix}"
    )
