"""Training: TRL's GRPOTrainer with a peft LoRA, configured from the recipe's training section.

GRPO itself (sampling groups, advantages, the clipped loss) is TRL's; this module maps the recipe onto
`GRPOConfig`, builds the weighted reward functions and shows progress. TRL defaults that are wrong for this
toolkit are set explicitly: bf16 and gradient checkpointing are on by default even on a CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_callback import ExportableState, TrainerState

from toolkit.checkpoints import RESTORED, STATE, check_same_optimizer, resumed_step
from toolkit.live import LiveMetrics
from toolkit.recipe import Recipe, RecipeError
from toolkit.recipe_trl import plain_value
from toolkit.report import plural, step_span

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """`steps`: the run's last step, counting those a resumed run took from its checkpoint; `seconds`: the time
    this process trained, the resumed part only; `resumed_from`: the checkpoint's step on --resume, else None."""

    steps: int
    seconds: float
    log_history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def trained_steps(self) -> int:
        """The steps this process trained (`seconds` is their time): after a resume, those past the checkpoint."""
        return self.steps - (self.resumed_from or 0)

    def summary(self) -> str:
        """The log line: "trained 4 steps in 135 s"; resumed, "trained steps 5-6 (2 steps; resumed from step 4)
        in 15 s", or "no steps trained: ..." when the checkpoint already held every step."""
        seconds = f"in {self.seconds:.0f} s"
        if self.resumed_from is None:
            return f"trained {plural(self.steps, 'step')} {seconds}"
        if self.trained_steps <= 0:
            return f"no steps trained: the checkpoint was already at step {self.resumed_from}"
        which, count = step_span(self.resumed_from + 1, self.steps), plural(self.trained_steps, "step")
        return f"trained {which} ({count}; resumed from step {self.resumed_from}) {seconds}"

    @property
    def final_log(self) -> dict:
        """The last per-step training log (reward, loss, ...), without the end-of-training summary."""
        steps = [entry for entry in self.log_history if "reward" in entry or "loss" in entry]
        return steps[-1] if steps else {}


def grpo_config(recipe: Recipe, output_dir: Path, backend=None):
    """The recipe's training section as a GRPOConfig; then what the backend needs (`Backend.grpo_overrides`), then
    `training.trl`, which the recipe check keeps off the fields mapped here."""
    from trl import GRPOConfig

    t = recipe.training
    on_gpu = torch.cuda.is_available()
    mapped = dict(
        output_dir=str(output_dir),
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_generations=t.num_generations,
        max_completion_length=t.max_completion_length,
        temperature=t.temperature,
        top_p=t.top_p,
        beta=t.beta,
        loss_type=t.loss_type,
        # Stated rather than left None. TRL reads None as "the same as epsilon"; Unsloth's patched GRPOConfig reads
        # it, under an explicit dapo loss, as the DAPO paper's 0.28 (seen on an H100), so the backends would clip
        # differently. training.trl's epsilon_high, if given, still wins.
        epsilon_high=t.trl.get("epsilon", GRPOConfig.__dataclass_fields__["epsilon"].default),
        scale_rewards=t.scale_rewards,
        mask_truncated_completions=t.mask_truncated_completions,
        reward_weights=[s.weight for s in recipe.rewards],
        seed=t.seed,
        logging_steps=t.logging_steps,
        # Explicit on purpose: TRL turns these on by default, and on a CPU bf16 is slow and checkpointing wasteful.
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not on_gpu,
        # Checkpoints only when asked (each holds the optimizer state too). Two are kept so that a kill while the
        # newest is written still leaves a whole one; transformers removes the older only after a save completes.
        **({"save_strategy": "steps", "save_steps": t.save_steps, "save_total_limit": 2} if t.save_steps
           else {"save_strategy": "no"}),
        report_to="none",
        disable_tqdm=True,  # rich shows progress instead
        log_level="warning",
    )
    overrides = backend.grpo_overrides(recipe) if backend is not None else {}
    asked = mapped | overrides | t.trl
    try:
        config = GRPOConfig(**asked)
    except ValueError as err:  # a combination TrainingArguments refuses (load_best_model_at_end with save_steps)
        raise RecipeError(f"training: trl.GRPOConfig refused these settings: {' '.join(str(err).split())}") from None
    warn_changed(asked, config, recipe)
    return config


def check_trainer_settings(config, model) -> None:
    """What the trainer resolves only once training starts, after the base evaluation, resolved now as it will:
    the optimizer (`adamw_8bit` without bitsandbytes), the scheduler's `lr_scheduler_kwargs`, the `report_to`
    integrations and vLLM. Nothing is trained; the scheduler is built on a throwaway optimizer."""
    from transformers import Trainer, get_scheduler
    from transformers.integrations import get_reporting_integration_callbacks

    def fail(field: str, err: Exception, what: str = "") -> None:
        raise RecipeError(f"training.trl.{field}: {what}{' '.join(str(err).split())}") from None

    checks = (ImportError, ValueError, TypeError, RuntimeError, NotImplementedError)
    try:
        Trainer.get_optimizer_cls_and_kwargs(config, model)
    except checks as err:
        fail("optim_args" if config.optim_args and isinstance(err, ValueError) else "optim", err,
             f"{plain_value(config.optim)}: ")
    try:
        throwaway = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
        get_scheduler(config.lr_scheduler_type, optimizer=throwaway, num_training_steps=max(config.max_steps, 1),
                      num_warmup_steps=config.get_warmup_steps(max(config.max_steps, 1)),
                      scheduler_specific_kwargs=config.lr_scheduler_kwargs)
    except checks as err:
        fail("lr_scheduler_kwargs", err, f"for training.lr_scheduler_type {plain_value(config.lr_scheduler_type)}: ")
    try:
        for callback in get_reporting_integration_callbacks(config.report_to):
            callback()  # each integration's callback checks that its package is installed
    except checks as err:
        fail("report_to", err)
    if getattr(config, "use_liger_kernel", False) and importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError("training.trl.use_liger_kernel: the Liger kernels are not installed (pip install "
                          "liger-kernel); leave it false")
    if getattr(config, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        raise RecipeError("training.trl.use_vllm: vLLM is not installed (pip install vllm, CUDA only); leave it "
                          "false to generate with the backend's own generate")


def check_enough_questions(config, questions: int) -> None:
    """Refuse a training set smaller than one generation batch's questions (generation_batch_size /
    num_generations). TRL's sampler drops an incomplete batch, so such a run would train no step at all, evaluate
    the untouched base model as the tuned one and exit 0, with only a transformers log line saying so."""
    needed = config.generation_batch_size // config.num_generations
    if questions < needed:
        raise RecipeError(
            f"training: {plural(questions, 'training question')}, but each generation batch samples {needed} "
            f"(generation_batch_size {config.generation_batch_size} / num_generations {config.num_generations}) and "
            f"TRL drops an incomplete one, so no step would be trained; add training questions (or raise "
            f"data.max_train_questions) or lower training.per_device_train_batch_size")


def warn_changed(asked: dict, config, recipe: Recipe) -> None:
    """Warn about each setting the GRPOConfig class changed on the way in, naming the recipe field. Plain TRL
    keeps what it is given; Unsloth's patched GRPOConfig rewrites some (scale_rewards to False under
    loss_type dr_grpo, the batch size to num_generations) and only prints a line saying so."""
    for key, value in asked.items():
        now = getattr(config, key, value)
        if key == "report_to" or plain_value(now) == plain_value(value):  # TrainingArguments turns "none" into []
            continue
        if key in recipe.training.trl:
            name = f"training.trl.{key}"
        elif key == "reward_weights":
            name = "rewards[].weight"
        else:
            name = f"training.{key}" if key in type(recipe.training).model_fields else f"GRPOConfig.{key}"
        # The class is named GRPOConfig either way; its module says whose it is (trl, or Unsloth's compiled cache).
        source = f"{type(config).__name__} from {type(config).__module__.split('.')[0]}"
        logger.warning("%s: %s changed %r to %r; the recipe's value is not used", name, source, value, plain_value(now))


def lora_config(recipe: Recipe):
    from peft import LoraConfig

    lora = recipe.training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        layers_to_transform=lora.layers_to_transform,
        task_type="CAUSAL_LM",
    )


def check_lora_targets(recipe: Recipe, model) -> None:
    """The recipe's LoRA targets against the loaded model. peft finds a typo only when it wraps the model, which
    comes after the base evaluation: minutes later on a CPU."""
    from toolkit.models import ModelError

    lora = recipe.training.lora
    if not isinstance(lora.target_modules, list):
        return
    names = [name for name, _ in model.named_modules()]
    # peft's rule for a list of names: a module matches when its dotted name is the target or ends with it.
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(f"training.lora.target_modules: no {', '.join(map(repr, missing))} module in the model "
                         f"(its linear layers: {', '.join(linear)})")
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    outside = [i for i in lora.layers_to_transform or [] if layers is not None and not 0 <= i < layers]
    if outside:
        raise ModelError(f"training.lora.layers_to_transform: {outside} not layers of the model (it has {layers}: "
                         f"0-{layers - 1})")


def linear_layers(model) -> list[str]:
    """The module names peft's "all-linear" stands for in `model`: its linear layers but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def check_finite(model, tokenizer, step: int, learning_rate: float) -> None:
    """A diverged run (learning rate far too high) leaves NaN or infinite LoRA weights, or finite ones so large
    that the logits overflow: the tuned model then answers nothing and the adapter is useless. Stop before it is
    evaluated and saved."""
    from toolkit.models import ModelError

    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    bad = sum(int((~torch.isfinite(p)).sum()) for _, p in trained)
    hint = f"nothing saved (lower training.learning_rate, now {learning_rate:g})"
    if bad:
        total = sum(p.numel() for _, p in trained)
        raise ModelError(f"training diverged: {bad} of the adapter's {total} weights are NaN or infinite after step "
                         f"{step}; {hint}")
    probe = tokenizer("Which grape is Barolo made from?", return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(**probe).logits).all())
    if not finite:
        raise ModelError(f"training diverged: the adapted model's logits are NaN or infinite after step {step}; {hint}")


def optimizer_settings(config) -> dict:
    """What a checkpoint's optimizer, scheduler and RNG state fix (`checkpoints.RESTORED`), from a GRPOConfig."""
    return {key: plain_value(getattr(config, key)) for key in RESTORED}


class OptimizerRecord(TrainerCallback, ExportableState):
    """Keeps the optimizer's settings in every checkpoint: transformers saves an ExportableState callback's state
    in trainer_state.json (stateful_callbacks), where `checkpoints.check_same_optimizer` reads them on --resume.
    The checkpoint's training_args.bin has them too, but only as a pickle. Rebuilt from a checkpoint's state
    (training.trl.restore_callback_states_from_checkpoint), transformers passes them back as keywords."""

    def __init__(self, settings: dict | None = None, **saved):
        self.settings = dict(settings) if settings is not None else saved

    def state(self) -> dict:
        return {"args": dict(self.settings), "attributes": {}}


class RecipeSteps(TrainerCallback):
    """training.save_steps and training.logging_steps on --resume: transformers loads the checkpoint's
    trainer_state.json over its own state, intervals included, and then saved and logged at the interval of the
    run that wrote the checkpoint, whatever the recipe said now (only a warning that they differ)."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


def train(recipe: Recipe, model, tokenizer, rows: list[dict], work_dir: Path, resume_from: Path | None = None,
          backend=None, callbacks: list | None = None, rewards: list | None = None, config=None):
    """Run GRPO on `rows`; returns the trainer (its `.model` is the LoRA-wrapped model) and a summary.

    `backend` (toolkit.backends) wraps the model with LoRA and builds the trainer; default: hf.
    `rewards`: the recipe's built rewards (`Recipe.build_rewards`), to share with evaluation; default: built here.
    `callbacks`: more `TrainerCallback`s, after the live metrics (benchmarks/bench_overhead.py times steps so).
    `config`: the run's `grpo_config`, when the caller built it already (to check a checkpoint before loading).

    `resume_from`: a checkpoint folder; training continues at its step with its optimizer, RNG and log history,
    so the summary's log history still holds every step once."""
    from datasets import Dataset
    from transformers import set_seed

    from toolkit.backends.hf import HFBackend

    backend = backend or HFBackend("default")
    # TRL wraps the model in LoRA before its Trainer seeds anything, so without this the adapter's random init
    # would depend on whatever used the RNG earlier in the process (index, evaluation) and training.seed would
    # not reproduce a run.
    set_seed(recipe.training.seed)
    config = config or grpo_config(recipe, work_dir, backend)
    check_enough_questions(config, len(rows))
    settings = optimizer_settings(config)
    # Read now: with save_total_limit the trainer removes the checkpoint it resumed from once it has saved two more.
    resumed_from = resumed_step(resume_from) if resume_from is not None else None
    if resume_from is not None:
        check_same_optimizer(resume_from, settings)
    live = LiveMetrics()
    trainer = backend.build_trainer(
        recipe,
        model,
        tokenizer,
        reward_funcs=recipe.build_rewards() if rewards is None else rewards,
        args=config,
        train_dataset=Dataset.from_list(rows),
        callbacks=[live, OptimizerRecord(settings), RecipeSteps(), *(callbacks or [])],
    )
    # With tqdm off, transformers prints every raw log dict; the live table and the report replace it.
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    if resume_from is not None and resumed_from >= recipe.training.max_steps:
        # A run killed after its last checkpoint (in the tuned evaluation, say) has nothing left to train, but
        # transformers' loop checks max_steps only after a step, so train() would take one step past it.
        live.close()
        trainer._load_from_checkpoint(str(resume_from))  # what train() loads on resume: the adapter's weights
        trainer.state = TrainerState.load_from_json(str(resume_from / STATE))
        logger.info("%s already holds all %d steps of training.max_steps: nothing left to train",
                    resume_from, recipe.training.max_steps)
    else:
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            live.close()  # an exception skips on_train_end, and a progress bar left running hides the cursor
    seconds = time.perf_counter() - start
    check_finite(trainer.model, tokenizer, trainer.state.global_step, recipe.training.learning_rate)
    result = TrainResult(trainer.state.global_step, round(seconds, 1), list(trainer.state.log_history),
                         resumed_from=resumed_from)
    logger.info("%s", result.summary())
    return trainer, result
