"""Export cost and llama.cpp speed on CPU; prints one JSON line.

    .venv/bin/python benchmarks/bench_export.py [--run DIR] [recipe overrides]

Without `--run`, a 1-step GRPO run of recipes/wine.yaml (tiny settings) is trained first into a temporary folder
(`setup_seconds`, not part of the export figures). Then every format is exported with verification on:
`export_seconds` per format (adapter copy, merge, F32 and F16 conversion, Q8_0 and Q4_K_M quantization from the F32
file) and `verify_seconds` for the greedy-token comparisons, `bytes` per format, and the verification verdicts.

Decoding speed: the first verification prompt (an eval question with its retrieved context, in the training
format), 64 new tokens with no early stop, greedy, after one warm-up, with the same thread count for both (the
OMP_NUM_THREADS torch follows, else every core): transformers fp32 (the merged model) and llama.cpp on each GGUF.
`speedup_vs_transformers` is llama.cpp tokens/s over transformers tokens/s, both including the prompt's prefill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from toolkit.cli import ERRORS, Parser, fail, run_folder

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 64
TINY = ["training.max_steps=1", "training.num_generations=4", "training.per_device_train_batch_size=4",
        "training.max_completion_length=16", "data.max_train_questions=1", "eval.limit=2", "eval.max_new_tokens=8"]
FORMATS = ["adapter", "merged", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]


def transformers_speed(merged: Path, ids: list[int], threads: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()

    def once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)
        assert out.shape[1] - len(ids) == NEW_TOKENS
        return NEW_TOKENS / (time.perf_counter() - start)

    once()
    return once()


def llama_speed(path: Path, ids: list[int]) -> float:
    from toolkit.verify import llama_greedy, load_llama

    llm = load_llama(path, n_ctx=len(ids) + NEW_TOKENS + 16)

    def once() -> float:
        start = time.perf_counter()
        tokens = llama_greedy(llm, ids, NEW_TOKENS, set())
        assert len(tokens) == NEW_TOKENS
        return NEW_TOKENS / (time.perf_counter() - start)

    once()
    speed = once()
    llm.close()
    return speed


class ChildFailed(Exception):
    """A child process (the 1-step training run) failed; the message is its own one-line error."""


def run_child(command: list[str], what: str) -> None:
    """Run `command` quietly; on failure raise ChildFailed with the child's `error:` line (a toolkit command's
    one-line error), else its exit status and last line, rather than a CalledProcessError and its command line."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return
    lines = done.stderr.strip().splitlines()
    said = next((line.removeprefix("error:").strip() for line in reversed(lines) if line.startswith("error:")), None)
    if said is not None:
        raise ChildFailed(f"{what}: {said}")
    raise ChildFailed(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'nothing on stderr'}")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_argument("--run", type=run_folder, help="a finished run folder (default: train a 1-step run first)")
    parser.add_overrides("recipe overrides for recipes/wine.yaml, e.g. training.max_completion_length=8")
    args = parser.parse_intermixed_args(argv)
    args.run = args.run and str(Path(args.run).resolve())  # the caller's path, before the chdir below
    os.chdir(ROOT)  # the recipe's data paths are relative to the project root
    console = Console(stderr=True)
    tmp = None if args.run else tempfile.TemporaryDirectory(prefix="bench-export-")
    try:
        result = measure(args, Path(args.run) if args.run else Path(tmp.name) / "run")
    except (*ERRORS, ChildFailed) as err:  # a mistyped override, a run without an adapter: one line, exit 2
        return fail(console, err)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result))
    return 0


def measure(args, run_dir: Path) -> dict:
    from toolkit.export import export
    from toolkit.recipe import load_recipe
    from toolkit.verify import cpu_threads, verification_messages

    # Both recipes checked first: a mistyped override is refused here, not after the training run (or by it).
    recipe = load_recipe("recipes/wine.yaml", [f"output_dir={run_dir}", *args.overrides])
    setup = 0.0
    if not args.run:
        load_recipe("recipes/wine.yaml", [f"output_dir={run_dir}", *TINY, *args.overrides])
        start = time.perf_counter()
        # The user's overrides too (after TINY, so theirs win): the model trained must be the model exported.
        run_child([sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={run_dir}", *TINY,
                   *args.overrides], "toolkit.run (the 1-step run to export)")
        setup = time.perf_counter() - start
    start = time.perf_counter()
    manifest = export(recipe, run_dir, FORMATS)
    total = time.perf_counter() - start
    entries = {entry["format"]: entry for entry in manifest["files"]}
    out = run_dir / "export"

    from transformers import AutoTokenizer

    threads = cpu_threads()
    _, prompts = verification_messages(recipe, 1)
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    hf = transformers_speed(out / "merged", ids, threads)
    speeds = {fmt: llama_speed(out / entry["path"], ids) for fmt, entry in entries.items() if fmt.startswith("gguf")}
    return {
        "benchmark": "export",
        "model": manifest["base_model"],
        "threads": threads,
        "setup_seconds": round(setup, 1),
        "export_seconds": {fmt: entry["seconds"] for fmt, entry in entries.items()},
        "verify_seconds": round(total - sum(entry["seconds"] for entry in entries.values()), 1),
        "bytes": {fmt: entry["bytes"] for fmt, entry in entries.items()},
        "verified": {fmt: {"match": e["verify"]["match"], "first_divergence": e["verify"]["first_divergence"]}
                     for fmt, e in entries.items() if "verify" in e},
        "prompt_tokens": len(ids),
        "new_tokens": NEW_TOKENS,
        "tokens_per_s": {"transformers_fp32": round(hf, 1),
                         **{f"llama_cpp_{fmt.removeprefix('gguf-')}": round(s, 1) for fmt, s in speeds.items()}},
        "speedup_vs_transformers": {fmt.removeprefix("gguf-"): round(s / hf, 2) for fmt, s in speeds.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
