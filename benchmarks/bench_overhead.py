"""What the toolkit costs per GRPO step over a bare TRL script doing the same training (CPU); prints one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py       # 2 runs × 4 steps per side (~8 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py --steps 2 --rounds 1   # a smoke test (~2 min)

Both sides train `recipes/wine.yaml`'s model on the same prompts (retrieved context and worked example, built once),
with the same rewards and GRPO settings, for --steps steps per run and --rounds runs per side, in this one process,
in the order toolkit, bare, bare, toolkit (so a machine whose load drifts favours neither side):

- toolkit: `toolkit.train.train`, as `python -m toolkit.run` calls it: the backend, the live metrics table, the
  checked reward wrappers, the GRPOConfig mapping.
- bare: what a user writes from TRL's documentation: `AutoModelForCausalLM`, `LoraConfig`, `GRPOConfig` with the
  same values, a `datasets.Dataset`, the reward functions as plain functions with their params bound,
  `GRPOTrainer(...).train()`, with transformers' default progress output.

A callback records the wall clock and this process's CPU time at the end of every step. Step 1 of each run is
warm-up (first generation, allocator growth) and is dropped; the rest are averaged per side. CPU time (`cpu_ratio`)
is the steadier number on a shared machine: other processes' load stretches the wall clock, not this process's
CPU time. Seeds are set before each trainer is built, so every run samples the same completions and does the same
work; `same_rewards` checks that from the logged rewards.
`ratio` is toolkit / bare seconds per step; target ≤ 1.10. Extra `key=value` arguments are recipe overrides.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from toolkit.cli import ERRORS, Parser, fail
from toolkit.recipe import load_recipe
from toolkit.rewards import REWARDS

ROOT = Path(__file__).resolve().parent.parent


class StepClock:
    """Wall and CPU time at the end of each step (after the optimizer step; logging of a step lands in the next).
    Made by `step_clock`, a TrainerCallback: transformers is imported when a run starts, not for `--help` or a
    mistyped override."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def per_step(self, warmup: int = 1) -> tuple[list[float], list[float]]:
        def deltas(marks):
            return [round(b - a, 3) for a, b in zip(marks, marks[1:], strict=False)][warmup:]

        return deltas(self.wall), deltas(self.cpu)


def step_clock() -> StepClock:
    from transformers import TrainerCallback

    return type("StepClock", (StepClock, TrainerCallback), {})()


def prepare(recipe):
    """Training rows (prompts with retrieved context) and the model path, built once for both sides."""
    from toolkit.models import resolve_model
    from toolkit.prompts import build_splits

    rows = build_splits(recipe).train
    return rows, resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)


def run_toolkit(recipe, backend, rows, model_path, work: Path) -> tuple[StepClock, list[dict]]:
    from transformers import set_seed

    from toolkit.train import train

    clock = step_clock()
    model, tokenizer = backend.load(recipe, model_path)
    set_seed(recipe.training.seed)
    trainer, result = train(recipe, model, tokenizer, rows, work, backend=backend, callbacks=[clock])
    del trainer, model
    return clock, result.log_history


def bare_reward(fn, params: dict, name: str):
    def reward(completions, **kwargs):
        return fn(completions=completions, **params, **kwargs)

    reward.__name__ = name  # TRL logs a reward under its function's name; two format entries need two names
    return reward


def run_bare(recipe, rows, model_path, work: Path) -> tuple[StepClock, list[dict]]:
    """The same training written directly against transformers, peft and TRL, with no toolkit code."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    t, lora = recipe.training, recipe.training.lora
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, recipe.model.dtype))
    config = GRPOConfig(
        output_dir=str(work), max_steps=t.max_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, num_generations=t.num_generations,
        max_completion_length=t.max_completion_length, temperature=t.temperature, top_p=t.top_p, beta=t.beta,
        loss_type=t.loss_type, scale_rewards=t.scale_rewards, mask_truncated_completions=t.mask_truncated_completions,
        reward_weights=[spec.weight for spec in recipe.rewards], seed=t.seed, logging_steps=t.logging_steps,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, save_strategy="no", report_to="none",
    )
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        layers_to_transform=lora.layers_to_transform, task_type="CAUSAL_LM",
    )
    rewards = [bare_reward(REWARDS[spec.name], spec.params, spec.key) for spec in recipe.rewards]
    clock = step_clock()
    set_seed(t.seed)
    trainer = GRPOTrainer(
        model=model, reward_funcs=rewards, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=peft_config, callbacks=[clock],
    )
    trainer.train()
    history = list(trainer.state.log_history)
    del trainer, model
    return clock, history


def main(argv: list[str] | None = None) -> int:
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per run; step 1 is dropped as warm-up")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side, in the order toolkit, bare, bare, toolkit, ... (load drift cancels)")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/wine.yaml"))
    parser.add_overrides("recipe overrides, e.g. training.max_completion_length=16")
    args = parser.parse_intermixed_args(argv)
    args.recipe = str(Path(args.recipe).resolve())  # the caller's path; then the project root, as recipe data
    os.chdir(ROOT)  # paths are relative to it
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be at least 2 (step 1 is warm-up) and --rounds at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        line = measure(parser, args)
    except ERRORS as err:  # a mistyped override, absent data or model: one line, as the toolkit says it
        return fail(Console(stderr=True), err)
    print(json.dumps(line))
    return 0


def measure(parser, args) -> dict:
    load_before = os.getloadavg()
    times = {"toolkit": ([], []), "bare": ([], [])}  # side -> (wall, cpu) seconds of every timed step
    rewards = {"toolkit": [], "bare": []}  # side -> the logged total reward per step, per run
    with tempfile.TemporaryDirectory(prefix="bench_overhead.") as tmp:
        recipe = load_recipe(args.recipe, [*args.overrides, f"training.max_steps={args.steps}", f"output_dir={tmp}"])
        if any(spec.name not in REWARDS for spec in recipe.rewards):
            parser.error("the bare side needs built-in rewards only")
        from toolkit.backends import select_backend

        backend = select_backend(recipe.model.backend)  # first: the unsloth backend patches TRL as it loads
        if backend.name != "hf":
            parser.error(f"this is the CPU benchmark (hf backend); got {backend.name}: see bench_grpo_gpu.py")
        rows, model_path = prepare(recipe)
        # ABBA...: on a machine whose load drifts, each side gets as many early as late runs.
        pairs = [("toolkit", "bare") if i % 2 == 0 else ("bare", "toolkit") for i in range(args.rounds)]
        order = [side for pair in pairs for side in pair]
        for i, side in enumerate(order):
            work = Path(tmp) / f"{side}-{i}"
            # transformers' default progress output prints log dicts to stdout; stdout is for the JSON line.
            with contextlib.redirect_stdout(sys.stderr):
                if side == "toolkit":
                    clock, history = run_toolkit(recipe, backend, rows, model_path, work)
                else:
                    clock, history = run_bare(recipe, rows, model_path, work)
            gc.collect()
            wall, cpu = clock.per_step()
            times[side][0].extend(wall)
            times[side][1].extend(cpu)
            rewards[side].append([round(entry["reward"], 6) for entry in history if "reward" in entry])

    import torch

    (toolkit_wall, toolkit_cpu), (bare_wall, bare_cpu) = times["toolkit"], times["bare"]
    runs = rewards["toolkit"] + rewards["bare"]
    return {
        "bench": "overhead",
        "steps": args.steps,
        "rounds": args.rounds,
        "timed_steps_per_side": len(toolkit_wall),
        "toolkit_step_s": round(statistics.mean(toolkit_wall), 3),
        "bare_step_s": round(statistics.mean(bare_wall), 3),
        "ratio": round(statistics.mean(toolkit_wall) / statistics.mean(bare_wall), 3),
        "toolkit_step_cpu_s": round(statistics.mean(toolkit_cpu), 3),
        "bare_step_cpu_s": round(statistics.mean(bare_cpu), 3),
        "cpu_ratio": round(statistics.mean(toolkit_cpu) / statistics.mean(bare_cpu), 3),
        "toolkit_steps_s": toolkit_wall,
        "bare_steps_s": bare_wall,
        "same_rewards": all(run == runs[0] for run in runs),  # equal work: the same completions on every run
        "target_ratio": 1.10,
        "torch_threads": torch.get_num_threads(),
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "overrides": args.overrides,
    }


if __name__ == "__main__":
    sys.exit(main())
