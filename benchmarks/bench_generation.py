"""Shared-prefix generation and loss pass (toolkit.generation) against plain ones, wine prompts; one JSON line.

    .venv/bin/python benchmarks/bench_generation.py            # ~7 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_generation.py --questions 16 --groups 2     # a quick look

Three workloads, each run plain and shared in alternation (plain, shared, plain, shared: a burst of other load hits
both), best of the rounds kept:
- `eval`: greedy answers to the first `--questions` eval questions in batches of `eval.batch_size`, through
  `toolkit.evaluate.generate` itself (the prompts share the system message and the worked example);
- `group`: `--groups` GRPO groups, `training.num_generations` sampled completions of one training prompt each, as
  TRL's generate call gets them, from the same seed;
- `loss`: TRL's loss pass over those groups (the plain run's completions, masked after their first end-of-turn
  token as TRL masks them): forward over [prompt | completion] with the recipe's LoRA adapter, log-probabilities of
  the completion tokens, backward. Plain: the model's forward; shared: `forward_sharing_prefix`, what
  `share_prompt_forward` installs in training.

`ratio` is shared seconds / plain seconds (below 1: faster). `identical` says whether both ways produced the same
tokens; sampled groups draw the same random numbers, so they should match too, barring float rounding. For `loss`,
`max_logp_diff` is the largest difference between the two ways' log-probabilities (float rounding only).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from toolkit.cli import ERRORS, Parser, fail

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "wine.yaml"))
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("questions", "groups", "rounds"):  # checked before the model loads: 0 rounds failed after it
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.recipe = str(Path(args.recipe).resolve())  # the caller's path; then the project root, as recipe data
    os.chdir(ROOT)  # paths are relative to it
    try:
        line = measure(args)
    except ERRORS as err:  # a missing recipe, a mistyped key, absent data or model: one line, as the toolkit says
        return fail(Console(stderr=True), err)
    print(json.dumps(line), flush=True)
    return 0


def measure(args) -> dict:
    import tempfile

    import torch

    from toolkit.evaluate import generate
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

    prompts = [row["prompt"] for row in splits.eval]
    size = recipe.eval.batch_size
    groups = [encode([row["prompt"]] * recipe.training.num_generations) for row in splits.train[: args.groups]]
    sampled = dict(max_new_tokens=recipe.training.max_completion_length, do_sample=True,
                   temperature=recipe.training.temperature, top_p=recipe.training.top_p, top_k=0,
                   pad_token_id=tokenizer.pad_token_id)

    def answer_eval(share: bool):  # toolkit.evaluate's own generation: texts, token counts, truncated flags
        return generate(model, tokenizer, prompts, recipe.eval.max_new_tokens, size, share)

    def sample_groups(share: bool):
        with torch.no_grad():
            return [(generate_sharing_prefix(model, g["input_ids"], g["attention_mask"], **sampled) if share
                     else model.generate(input_ids=g["input_ids"], attention_mask=g["attention_mask"], **sampled))
                    .tolist() for g in groups]

    eval_tokens = sum(int(encode(prompts[i : i + size])["attention_mask"].sum()) for i in range(0, len(prompts), size))
    sizes = {"eval": (-(-len(prompts) // size), len(prompts), eval_tokens),
             "group": (len(groups), sum(len(g["input_ids"]) for g in groups),
                       sum(int(g["attention_mask"].sum()) for g in groups))}
    line = {"bench": "generation", "recipe": args.recipe, "threads": torch.get_num_threads()}
    for name, work in (("eval", answer_eval), ("group", sample_groups)):
        best = {"plain": float("inf"), "shared": float("inf")}
        outputs = {}
        for _ in range(args.rounds):
            for label in ("plain", "shared"):
                torch.manual_seed(recipe.training.seed)
                start = time.perf_counter()
                outputs[label] = work(label == "shared")
                best[label] = min(best[label], time.perf_counter() - start)
        batches, rows, prompt_tokens = sizes[name]
        line[name] = {"batches": batches, "rows": rows, "prompt_tokens": prompt_tokens,
                      "plain_s": round(best["plain"], 2), "shared_s": round(best["shared"], 2),
                      "ratio": round(best["shared"] / best["plain"], 3),
                      "identical": outputs["plain"] == outputs["shared"]}
    completions = outputs["plain"]  # the last workload's: the sampled groups

    line["loss"] = time_loss_pass(recipe, model, tokenizer, groups, completions, args.rounds)
    return line


def time_loss_pass(recipe, model, tokenizer, groups, sampled, rounds) -> dict:
    """TRL's loss pass on the sampled groups, plain and shared in alternation; best of `rounds`."""
    import torch
    from peft import get_peft_model

    from toolkit.generation import forward_sharing_prefix
    from toolkit.train import lora_config

    peft_model = get_peft_model(model, lora_config(recipe))
    batches = []
    for group, rows in zip(groups, sampled, strict=True):
        ids = torch.tensor(rows)
        prompt_width = group["input_ids"].shape[1]
        completion = ids[:, prompt_width:]
        # TRL keeps a completion up to and including its first end-of-turn token.
        ended = (completion == tokenizer.eos_token_id).int().cumsum(dim=1)
        completion_mask = ((ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))).long()
        batches.append((ids, torch.cat([group["attention_mask"], completion_mask], dim=1), completion,
                        completion_mask))

    def loss_pass(share: bool):
        logps_all = []
        for ids, mask, completion, completion_mask in batches:
            keep = completion.shape[1] + 1
            out = forward_sharing_prefix(peft_model, ids, mask, keep, forward=peft_model.forward) if share else None
            if out is None:
                out = peft_model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False)
            logps = torch.log_softmax(out.logits[:, :-1], dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
            (-(logps * completion_mask).sum() / completion_mask.sum()).backward()
            peft_model.zero_grad()
            logps_all.append(logps.detach() * completion_mask)
        return logps_all

    best, logps = {"plain": float("inf"), "shared": float("inf")}, {}
    for _ in range(rounds):
        for label in ("plain", "shared"):
            start = time.perf_counter()
            logps[label] = loss_pass(label == "shared")
            best[label] = min(best[label], time.perf_counter() - start)
    diff = max(float((a - b).abs().max()) for a, b in zip(logps["plain"], logps["shared"], strict=True))
    return {"batches": len(batches), "rows": sum(len(b[0]) for b in batches),
            "tokens": sum(int(b[1].sum()) for b in batches),
            "plain_s": round(best["plain"], 2), "shared_s": round(best["shared"], 2),
            "ratio": round(best["shared"] / best["plain"], 3), "max_logp_diff": float(f"{diff:.2g}")}


if __name__ == "__main__":
    raise SystemExit(main())
