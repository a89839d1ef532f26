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

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished run folder (default: train a 1-step run first)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.run = args.run and str(Path(args.run).resolve())  # the caller's path, before the chdir below
    os.chdir(ROOT)  # the recipe's data paths are relative to the project root
    from toolkit.export import export
    from toolkit.recipe import load_recipe
    from toolkit.verify import cpu_threads, verification_messages

    tmp = None
    setup = 0.0
    run_dir = Path(args.run) if args.run else None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-export-")
        run_dir = Path(tmp.name) / "run"
        start = time.perf_counter()
        # The user's overrides too (after TINY, so theirs win): the model trained must be the model exported.
        subprocess.run([sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={run_dir}", *TINY,
                        *args.overrides], check=True, capture_output=True)
        setup = time.perf_counter() - start
    recipe = load_recipe("recipes/wine.yaml", [f"output_dir={run_dir}", *args.overrides])
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
    result = {
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
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
