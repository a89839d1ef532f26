"""Shared-prefix generation (toolkit.generation) against plain `generate`, on the wine recipe's prompts; one JSON line.

    .venv/bin/python benchmarks/bench_generation.py            # ~6.5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_generation.py --questions 16 --groups 2     # a quick look

Two workloads, each run plain and shared in alternation (plain, shared, plain, shared: a burst of other load hits
both), best of the rounds kept:
- `eval`: greedy answers to the first `--questions` eval questions in batches of `eval.batch_size`, as
  `toolkit.evaluate` writes them (the prompts share the system message and the worked example);
- `group`: `--groups` GRPO groups, `training.num_generations` sampled completions of one training prompt each, as
  TRL's generate call gets them, from the same seed.

`ratio` is shared seconds / plain seconds (below 1: faster). `identical` says whether both ways produced the same
tokens; sampled groups draw the same random numbers, so they should match too, barring float rounding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "wine.yaml"))
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from toolkit.generation import generate_sharing_prefix
    from toolkit.models import load_model, resolve_model
    from toolkit.prompts import build_splits
    from toolkit.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [f"output_dir={tmp}", f"eval.limit={args.questions}"])
        splits = build_splits(recipe)
    model, tokenizer = load_model(resolve_model(recipe.model.name_or_path, recipe.model.cache_dir), recipe.model.dtype)
    model.eval()

    def encode(chats):
        return tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, padding=True,
                                             return_tensors="pt", return_dict=True)

    size = recipe.eval.batch_size
    eval_batches = [encode([row["prompt"] for row in splits.eval[i : i + size]])
                    for i in range(0, len(splits.eval), size)]
    n = recipe.training.num_generations
    groups = [encode([row["prompt"]] * n) for row in splits.train[: args.groups]]
    greedy = dict(max_new_tokens=recipe.eval.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                  top_k=None, pad_token_id=tokenizer.pad_token_id)
    sampled = dict(max_new_tokens=recipe.training.max_completion_length, do_sample=True,
                   temperature=recipe.training.temperature, top_p=recipe.training.top_p, top_k=0,
                   pad_token_id=tokenizer.pad_token_id)

    def plain(batch, **kwargs):
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def shared(batch, **kwargs):
        return generate_sharing_prefix(model, batch["input_ids"], batch["attention_mask"], **kwargs)

    def run(how, batches, settings, seed):
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            outs = [how(batch, **settings) for batch in batches]
        return time.perf_counter() - start, [out.tolist() for out in outs]

    line = {"bench": "generation", "recipe": args.recipe, "threads": torch.get_num_threads()}
    for name, batches, settings in (("eval", eval_batches, greedy), ("group", groups, sampled)):
        best = {"plain": float("inf"), "shared": float("inf")}
        tokens = {}
        for _ in range(args.rounds):
            for label, how in (("plain", plain), ("shared", shared)):
                seconds, tokens[label] = run(how, batches, settings, recipe.training.seed)
                best[label] = min(best[label], seconds)
        prompt_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        line[name] = {"batches": len(batches), "rows": sum(len(b["input_ids"]) for b in batches),
                      "prompt_tokens": prompt_tokens, "plain_s": round(best["plain"], 2),
                      "shared_s": round(best["shared"], 2), "ratio": round(best["shared"] / best["plain"], 3),
                      "identical": tokens["plain"] == tokens["shared"]}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
