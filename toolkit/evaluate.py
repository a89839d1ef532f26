"""Evaluation: greedy answers on the eval split, scored with the recipe's rewards plus fixed headline metrics.

Base and tuned models see the same prompts and the same decoding, so their columns are comparable. Headline
metrics are computed the same way whatever the recipe's reward mix is:
- `answer_match`: fraction of answers that exactly match the gold answer or an alias (after normalization);
- `format`: fraction of completions in the strict `<think>…</think><answer>…</answer>` format;
- `reward_total`: the recipe's weighted reward sum (what GRPO optimizes), `reward/<name>`: each reward's mean;
- `completion_tokens`, `truncated`: mean length and the fraction cut at `eval.max_new_tokens`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from toolkit.recipe import Recipe
from toolkit.rewards import build_reward, completion_text, extract_answer, is_exact_match

logger = logging.getLogger(__name__)

REWARD_COLUMNS = ("question", "answer", "aliases", "source", "context", "context_ids")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[dict]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int):
    """Greedy completions for chat prompts; returns (texts, token counts, truncated flags)."""
    model.eval()
    texts, lengths, truncated = [], [], []
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer.apply_chat_template(
            prompts[start : start + batch_size], add_generation_prompt=True, tokenize=True, padding=True,
            return_tensors="pt", return_dict=True,
        ).to(model.device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            ended = next((i for i, tok in enumerate(row) if tok in eos), None)
            lengths.append(ended if ended is not None else len(row))
            truncated.append(ended is None)
            texts.append(tokenizer.decode(row[: lengths[-1]], skip_special_tokens=True))
    return texts, lengths, truncated


def _mean(values) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return round(sum(kept) / len(kept), 4) if kept else float("nan")


def score(recipe: Recipe, rows: list[dict], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Metrics over all completions, and per-question scores."""
    columns = {key: [row[key] for row in rows] for key in REWARD_COLUMNS}
    per_reward = {spec.key: spec.build()(completions, **columns) for spec in recipe.rewards}
    strict = build_reward("format", {"mode": "strict"})(completions, **columns)
    exact = [is_exact_match(c, row["answer"], row["aliases"]) for c, row in zip(completions, rows, strict=True)]
    totals = [
        sum(spec.weight * v for spec in recipe.rewards if (v := per_reward[spec.key][i]) is not None)
        for i in range(len(completions))
    ]
    metrics = {"answer_match": _mean(map(float, exact)), "format": _mean(strict), "reward_total": _mean(totals)}
    metrics |= {f"reward/{name}": _mean(values) for name, values in per_reward.items()}
    per_question = [
        {"exact_match": exact[i], "format": strict[i], "reward_total": totals[i]}
        | {name: values[i] for name, values in per_reward.items()}
        for i in range(len(completions))
    ]
    return metrics, per_question


def evaluate(recipe: Recipe, model, tokenizer, rows: list[dict], label: str) -> EvalResult:
    logger.info("evaluating %s on %d questions", label, len(rows))
    texts, lengths, truncated = generate(
        model, tokenizer, [row["prompt"] for row in rows], recipe.eval.max_new_tokens, recipe.eval.batch_size
    )
    metrics, per_question = score(recipe, rows, texts)
    metrics["completion_tokens"] = _mean(lengths)
    metrics["truncated"] = _mean(map(float, truncated))
    predictions = [
        {
            "question": row["question"], "gold": row["answer"], "completion": text,
            "extracted": extract_answer(completion_text(text)), **scores,
        }
        for row, text, scores in zip(rows, texts, per_question, strict=True)
    ]
    return EvalResult(metrics, predictions)
