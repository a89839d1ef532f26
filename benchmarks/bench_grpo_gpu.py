"""GRPO on a CUDA GPU, `unsloth` vs `hf` (TRL + peft on bitsandbytes 4-bit): step time, generation tokens/s and
peak VRAM; prints one JSON line. Needs a CUDA GPU and `pip install -e '.[cuda]'`; without CUDA it exits with 2.

    python benchmarks/bench_grpo_gpu.py [--steps 5] [--warmup 1] [--generations 8] [--batch 8] [--completion 256]
        [--log-dir logs]              # keep each backend's log (logs/unsloth.log, logs/hf.log)
    python benchmarks/bench_grpo_gpu.py --recipe recipes/wine-r1.yaml --backends unsloth --completion 1024 \
        --max-seq-length 1536          # the GPU recipe's own LoRA rank and optimizer, its completion length

What is compared, and how:
- The model is a random-init model of Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads / 2 KV heads,
  intermediate 8960, vocabulary 151936), built from a local `Qwen2Config` and saved in bf16 to a temporary folder
  with the packaged SmolLM2 tokenizer (its 49,152 ids all index the larger embedding). Nothing is downloaded.
  Random weights almost never sample the end-of-turn token, so every completion runs to the length limit and both
  backends generate the same number of tokens.
- The recipe is `--recipe` (recipes/wine.yaml: data, retrieval, prompts, rewards, LoRA r=16, AdamW) at a
  T4-sized GRPO scale: 4-bit base weights, LoRA on the 7 projections of every layer, `--generations` completions
  per question, `--batch` completions per step, `--completion` tokens each. The prompts are built once and shared;
  `--rows` reuses prompts written before (a JSON list of rows), so a GPU machine needs no embedder or index, and
  `--tokenizer` names a tokenizer folder instead of converting the packaged SmolLM2 GGUF.
- Each backend trains in its own fresh interpreter with the same seed: Unsloth patches transformers and TRL as it
  is imported, so an `hf` run after it in one process would not be plain TRL.
- `hf` runs with gradient checkpointing on (training.trl.gradient_checkpointing), the usual QLoRA memory set-up;
  Unsloth always checkpoints (its offloaded variant). `unsloth` runs without vLLM unless `--vllm`: vLLM reserves
  a fixed share of the GPU up front, so peak memory would measure that share, not the need.
- step_seconds: median of TRL's per-step `step_time` (generation + loss + backward) after `--warmup` steps.
  gen_tokens_per_s: completion tokens / seconds inside the trainer's generation call, same steps. peak_vram_gib:
  `torch.cuda.max_memory_reserved()` from before the model loads to the end of training (allocated is reported
  too). Ratios are unsloth / hf; the targets are step ≤ 0.55 and VRAM ≤ 0.5. `--backends unsloth` measures one
  backend alone (no ratios).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit.cli import Parser

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
TARGETS = {"step_seconds": 0.55, "peak_vram_gib": 0.5}
QWEN25_15B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
              "intermediate_size": 8960, "vocab_size": 151936, "max_position_embeddings": 32768,
              "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
PACKAGES = ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes", "xformers")


def overrides(args, model_dir: Path | str, out: Path | str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}", f"output_dir={out}", "model.load_in_4bit=true", "model.dtype=bfloat16",
        f"model.max_seq_length={args.max_seq_length}", f"training.max_steps={args.warmup + args.steps}",
        f"training.num_generations={args.generations}", f"training.per_device_train_batch_size={args.batch}",
        f"training.max_completion_length={args.completion}", "training.lora.layers_to_transform=null",
        "training.logging_steps=1",
    ]


def make_model(folder: Path, tokenizer_path: str | None) -> Path:
    """A random-init Qwen2.5-1.5B-shaped model with the SmolLM2 tokenizer (packaged, or `tokenizer_path`), in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from toolkit.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or resolve_model("packaged:smollm2-135m-instruct"))
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    config = Qwen2Config(**QWEN25_15B, **ids)
    torch.manual_seed(0)
    with torch.device("cuda"):  # initializing 1.5 B weights is minutes on a CPU, a second on the GPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.update(**ids)
    model_dir = folder / "qwen2.5-1.5b-shape-random"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    return model_dir


def make_rows(args, model_dir: Path, folder: Path) -> Path:
    """The recipe's training prompts (retrieved context, few-shot turns), written once for both backends."""
    from toolkit.prompts import build_splits
    from toolkit.recipe import load_recipe

    # hf: the parent only builds prompts, and under `auto` the recipe check would import Unsloth here for nothing.
    recipe = load_recipe(args.recipe, overrides(args, model_dir, folder / "index") + ["model.backend=hf"])
    rows = build_splits(recipe).train
    path = folder / "rows.json"
    path.write_text(json.dumps(rows))
    return path


def timed_generation(trainer_class, totals: dict) -> None:
    """Wrap the trainer's generation call to add its seconds and completion tokens to `totals`, per step."""
    name = next((n for n in ("_generate_single_turn", "_generate") if hasattr(trainer_class, n)), None)
    if name is None:
        return
    original = getattr(trainer_class, name)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        import torch

        torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        torch.cuda.synchronize()
        # completion_ids is the first list of token-id lists in the result (both TRL 1.14 methods return one).
        completions = next((x for x in out if isinstance(x, list) and x and isinstance(x[0], list)), [])
        totals["calls"].append((time.perf_counter() - start, sum(len(c) for c in completions)))
        return out

    setattr(trainer_class, name, wrapper)


def backend_overrides(backend: str) -> list[str]:
    """What one backend's worker adds to the recipe. model.backend is pinned: under `auto` the recipe check imports
    Unsloth (to patch TRL before it loads) on any CUDA machine that has it, and the hf run would then train
    Unsloth's patched trainer. The hf arm checkpoints gradients as Unsloth does by itself (one key, merged into the
    recipe's trl mapping: wine-r1.yaml's optim and max_grad_norm stay, so the two arms train alike)."""
    return [f"model.backend={backend}"] + (["training.trl.gradient_checkpointing=true"] if backend == "hf" else [])


def worker(args) -> dict:
    """One backend's run, in this (fresh) process."""
    import torch

    from toolkit.backends import select_backend  # first: Unsloth must be imported before transformers and TRL
    from toolkit.recipe import load_recipe

    backend = select_backend(args.worker)
    if backend.name == "unsloth":
        backend.fast_inference = args.vllm
    recipe = load_recipe(args.recipe, overrides(args, args.model_dir, args.out) + backend_overrides(backend.name))
    rows = json.loads(Path(args.rows).read_text())

    import trl

    from toolkit.train import train

    totals = {"calls": []}
    timed_generation(trl.GRPOTrainer, totals)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model, tokenizer = backend.load(recipe, str(args.model_dir))
    load_seconds = time.perf_counter() - start
    _, result = train(recipe, model, tokenizer, rows, Path(args.out) / "trainer", backend=backend)
    steps = [entry for entry in result.log_history if "step_time" in entry]
    measured = steps[args.warmup:]
    calls = totals["calls"][args.warmup:] if len(totals["calls"]) == len(steps) else totals["calls"]
    gen_seconds = sum(s for s, _ in calls)
    return {
        "backend": backend.name,
        "reason": backend.reason,
        "vllm": bool(getattr(backend, "fast_inference", False)),
        "steps_measured": len(measured),
        "step_seconds": round(statistics.median(e["step_time"] for e in measured), 3) if measured else None,
        "step_seconds_mean": round(statistics.fmean(e["step_time"] for e in measured), 3) if measured else None,
        "gen_tokens_per_s": round(sum(n for _, n in calls) / gen_seconds, 1) if gen_seconds else None,
        "gen_seconds_per_step": round(gen_seconds / len(measured), 3) if measured and calls else None,
        "mean_completion_tokens": round(statistics.fmean(e.get("completions/mean_length", 0) for e in measured), 1)
        if measured else None,
        "peak_vram_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "load_seconds": round(load_seconds, 1),
    }


def run_worker(args, name: str, model_dir: Path, rows: Path, folder: Path) -> dict:
    result = folder / f"{name}.json"
    # The user's arguments first: argparse keeps the last of a repeated option, so the resolved --rows wins.
    command = [sys.executable, __file__, *sys.argv[1:], "--worker", name, "--model-dir", str(model_dir),
               "--rows", str(rows), "--out", str(folder / name), "--result", str(result)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # The worker's log goes straight to a file, so what it printed survives a run killed from outside (a timeout).
    log = Path(args.log_dir or folder) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not result.is_file():
        return {"backend": name, "error": f"exit {proc.returncode}: {log.read_text()[-2000:]}"}
    return json.loads(result.read_text())


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def main() -> int:
    # Parser: the description is the docstring's first paragraph whole (its first line stops mid-sentence).
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_argument("--recipe", default="recipes/wine.yaml", help="recipe whose prompts, rewards, LoRA and "
                        "optimizer settings are used (relative to the project root)")
    parser.add_argument("--backends", default="unsloth,hf", help="comma-separated: unsloth, hf")
    parser.add_argument("--tokenizer", help="tokenizer folder for the random model (default: the packaged SmolLM2's)")
    parser.add_argument("--rows", help="prompts written before (JSON list of rows) instead of building the index")
    parser.add_argument("--steps", type=int, default=5, help="measured GRPO steps per backend")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured (compilation)")
    parser.add_argument("--generations", type=int, default=8, help="training.num_generations")
    parser.add_argument("--batch", type=int, default=8, help="training.per_device_train_batch_size")
    parser.add_argument("--completion", type=int, default=256, help="training.max_completion_length")
    parser.add_argument("--max-seq-length", type=int, default=1024, help="model.max_seq_length (unsloth)")
    parser.add_argument("--vllm", action="store_true", help="unsloth generates with vLLM (peak VRAM then shows "
                        "vLLM's reservation)")
    parser.add_argument("--log-dir", help="folder for each backend's log (<backend>.log); default: a temporary "
                        "folder, removed at the end")
    parser.add_argument("--worker", choices=["unsloth", "hf"], help=argparse.SUPPRESS)
    for internal in ("--model-dir", "--out", "--result"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    if not backends or set(backends) - {"unsloth", "hf"}:
        parser.error(f"--backends: expected a comma-separated list of unsloth and hf, got {args.backends!r}")
    # Before any GPU work: --steps 0 measured nothing (nulls after a whole run), --warmup -1 measured only the last
    # step (steps[-1:]) of one step fewer than asked.
    for name, least in (("steps", 1), ("warmup", 0), ("generations", 1), ("batch", 1), ("completion", 1),
                        ("max_seq_length", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    for name in ("rows", "tokenizer", "log_dir"):  # relative to where the user ran it, before the chdir below
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    os.chdir(ROOT)  # the recipe's data paths are relative to the project root
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_grpo_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured",
              file=sys.stderr)
        return 2
    needed = ["bitsandbytes"] + (["unsloth"] if "unsloth" in backends else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        print(f"bench_grpo_gpu: {', '.join(missing)} not installed: pip install -e '.[cuda]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-grpo-gpu-") as tmp:
        folder = Path(tmp)
        model_dir = make_model(folder, args.tokenizer)
        rows = Path(args.rows) if args.rows else make_rows(args, model_dir, folder)
        results = {name: run_worker(args, name, model_dir, rows, folder) for name in backends}
    fast, base = results.get("unsloth", {}), results.get("hf", {})
    ratios = {
        key: round(fast[key] / base[key], 3) if fast.get(key) and base.get(key) else None
        for key in ("step_seconds", "peak_vram_gib", "gen_tokens_per_s")
    }
    line = {
        "benchmark": "bench_grpo_gpu",
        "device": torch.cuda.get_device_name(0),
        "versions": versions(),
        "model": "random-init Qwen2.5-1.5B shape, 4-bit",
        "settings": {key: getattr(args, key) for key in ("recipe", "steps", "warmup", "generations", "batch",
                                                         "completion", "max_seq_length", "vllm")},
        **results,  # one entry per measured backend
        "ratios": ratios,
        "targets": TARGETS,
        "meets_targets": all(ratios[k] is not None and ratios[k] <= v for k, v in TARGETS.items())
        if len(results) == 2 else None,
    }
    print(json.dumps(line))
    return 0 if not any("error" in result for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
