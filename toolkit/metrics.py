"""Evaluation metrics: per-question scores, column means, and paired bootstrap confidence intervals.

No model and no torch here: everything works on completions (strings) and the eval rows, so it is tested on
hand-made predictions. The headline metrics are the same whatever the recipe's reward mix is:

- `answer_match`: the extracted `<answer>` equals the gold answer or an alias after normalization (exact match);
- `token_f1`: SQuAD token F1 of the extracted answer against the best gold/alias (1 on an exact match, 0 when
  several `<answer>` tags hedge, and 0 for a wrong or missing number against a gold's: `answer_match`'s `partial`);
- `context_grounding`: share of the answer's content words found in the question's retrieved chunks (for the
  no-context column too: there it tells whether the model's own answer agrees with the documents);
- `format`: strict `<think>…</think><answer>…</answer>` and nothing else;
- `completion_tokens`, `truncated`: completion length and whether it was cut at `eval.max_new_tokens`;
- `retrieval_recall`: the question's gold `source` document is among the retrieved chunks (recall@top_k); not
  applicable (None) to the no-context column, which sees no retrieved chunks;
- `reward_total`: the recipe's weighted reward sum (what GRPO optimizes), `reward/<label>`: each reward.

`retrieval_metrics` scores the index itself (recall@k and MRR of the questions' gold documents) for the report
and `python -m toolkit.index --eval`.

Intervals are percentile bootstraps over questions. Every column and every difference is resampled with the same
question indices (a paired bootstrap: the columns answer the same questions), from a fixed seed, so a report is
reproducible. A difference is significant when its interval excludes zero and it is paired over at least
`MIN_QUESTIONS` questions: over one or two the bootstrap has next to nothing to resample (two wins give the
interval [+1, +1]), and a report of `--limit 2` would call a coin toss significant.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from toolkit.rewards import build_reward, completion_text, extract_answer, is_exact_match

if TYPE_CHECKING:
    from toolkit.data import QA
    from toolkit.index_store import Index

# The row columns a reward gets, as in training: TRL passes every dataset column (the rows of
# toolkit.prompts.build_rows) but `prompt`, which it passes as `prompts`. A reward that trains must also evaluate.
REWARD_COLUMNS = ("question", "answer", "aliases", "source", "context", "context_ids", "context_sources", "examples")
# (a, b): report a − b. Only pairs whose both columns were evaluated are reported.
DIFFERENCES = (("tuned", "base"), ("base", "no_context"))
RESAMPLES, SEED, CONFIDENCE = 2000, 0, 0.95
MIN_QUESTIONS = 5  # the fewest paired questions a difference is called significant over


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return round(sum(kept) / len(kept), 4) if kept else None


def retrieval_hit(row: dict) -> bool | None:
    """Whether the row's gold source document is among its retrieved chunks; None when the row names no source."""
    source = row.get("source")
    if not source:
        return None
    return source in row.get("context_sources", [])


def retrieval_metrics(index: Index, questions: list[QA], top_k: int) -> dict:
    """Recall@k (gold document among the top k chunks) for k in 1, top_k, 5, 10, and the gold document's MRR over
    the deepest of those k (MRR@10, or MRR@top_k when top_k is larger).

    Only questions with a `source` count; `questions` says how many did.
    """
    ks = sorted({1, top_k, 5, 10})
    scored = [qa for qa in questions if qa.source]
    metrics: dict = {"questions": len(scored)}
    if not scored:
        return metrics
    ranks = []
    for qa, hits in zip(scored, index.search([qa.question for qa in scored], ks[-1]), strict=True):
        sources = [hit.source for hit in hits]
        ranks.append(sources.index(qa.source) + 1 if qa.source in sources else None)
    for k in ks:
        metrics[f"recall@{k}"] = round(sum(r is not None and r <= k for r in ranks) / len(ranks), 4)
    metrics[f"mrr@{ks[-1]}"] = round(sum(1 / r for r in ranks if r is not None) / len(ranks), 4)
    return metrics


def score_completions(recipe, rows: list[dict], completions: list[str],
                      prompts: list[list[dict]] | None = None, rewards: list | None = None) -> list[dict]:
    """Per-question scores of completions that only depend on the text: answer, format, grounding, rewards.
    `prompts`: the chat prompts the completions answer (default: each row's `prompt`). `rewards`: the recipe's
    rewards already built (`Recipe.build_rewards`), so that a model-based one loads its model once, not per call."""
    columns = {key: [row.get(key) for row in rows] for key in REWARD_COLUMNS}
    columns["prompts"] = [row.get("prompt") for row in rows] if prompts is None else prompts
    rewards = recipe.build_rewards() if rewards is None else rewards
    per_reward = {spec.key: fn(completions, **columns) for spec, fn in zip(recipe.rewards, rewards, strict=True)}
    strict = build_reward("format", {"mode": "strict"})(completions, **columns)
    f1 = build_reward("answer_match", {"partial": True})(completions, **columns)
    grounding = build_reward("context_grounding")(completions, **columns)
    scores = []
    for i, (text, row) in enumerate(zip(completions, rows, strict=True)):
        total = sum(spec.weight * v for spec in recipe.rewards if (v := per_reward[spec.key][i]) is not None)
        scores.append(
            {
                "answer_match": is_exact_match(completion_text(text), row["answer"], row["aliases"]),
                "token_f1": None if f1[i] is None else round(f1[i], 4),
                "context_grounding": None if grounding[i] is None else round(grounding[i], 4),
                "format": strict[i],
                "reward_total": round(total, 4),
                **{f"reward/{name}": values[i] for name, values in per_reward.items()},
            }
        )
    return scores


def score(recipe, rows: list[dict], completions: list[str]) -> tuple[dict[str, float | None], list[dict]]:
    """Means and per-question scores of completions (text-only metrics)."""
    per_question = score_completions(recipe, rows, completions)
    return column_means(per_question), per_question


def extracted(completion: str) -> str | None:
    return extract_answer(completion_text(completion))


def column_means(per_question: list[dict]) -> dict[str, float | None]:
    """Metric → mean over the questions where it applies (None where it applies to none)."""
    names = list(dict.fromkeys(name for scores in per_question for name in scores))
    return {name: _mean(_as_float(scores.get(name)) for scores in per_question) for name in names}


def _as_float(value) -> float | None:
    return None if value is None else float(value)


def _array(per_question: list[dict], name: str) -> np.ndarray:
    return np.array([np.nan if (v := scores.get(name)) is None else float(v) for scores in per_question], dtype=float)


def _interval(values: np.ndarray, indices: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval of the mean of `values` (NaN = not applicable) over bootstrap resamples `indices`."""
    if np.isnan(values).all():
        return None
    with warnings.catch_warnings():  # a resample may draw only not-applicable questions: its mean is NaN, skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values[indices], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return round(float(low), 4), round(float(high), 4)


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """`resamples` × `n` question indices drawn with replacement, shared by all columns (paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def summarize(
    columns: dict[str, list[dict]], resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> dict:
    """Means, intervals and paired differences of per-question scores, one list per column (same questions, same
    order in every column).

    Returns `{"means": {column: {metric: mean}}, "intervals": {column: {metric: {low, high, questions}}},
    "differences": {"a - b": {metric: {mean, low, high, significant, questions}}}, "bootstrap": {...}}`.
    """
    sizes = {len(scores) for scores in columns.values()}
    if len(sizes) > 1:
        raise ValueError(f"columns answer different numbers of questions: { {k: len(v) for k, v in columns.items()} }")
    n = sizes.pop() if sizes else 0
    indices = bootstrap_indices(n, resamples, seed) if n else None
    means = {label: column_means(scores) for label, scores in columns.items()}
    intervals: dict[str, dict] = {}
    for label, scores in columns.items():
        intervals[label] = {}
        for name in means[label]:
            values = _array(scores, name)
            found = _interval(values, indices, confidence) if n else None
            if found is not None:
                applicable = int((~np.isnan(values)).sum())
                intervals[label][name] = {"low": found[0], "high": found[1], "questions": applicable}
    differences = {}
    for a, b in DIFFERENCES:
        if a in columns and b in columns:
            differences[f"{a} - {b}"] = _differences(columns[a], columns[b], means[a], indices, confidence)
    return {
        "means": means,
        "intervals": intervals,
        "differences": differences,
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": confidence, "questions": n},
    }


def _differences(a: list[dict], b: list[dict], names, indices, confidence: float) -> dict:
    out = {}
    for name in names:
        delta = _array(a, name) - _array(b, name)  # NaN where either side does not apply
        if indices is None or np.isnan(delta).all():
            continue
        low, high = _interval(delta, indices, confidence)
        questions = int((~np.isnan(delta)).sum())
        out[name] = {
            "mean": round(float(np.nanmean(delta)), 4),
            "low": low,
            "high": high,
            "significant": bool(low > 0 or high < 0) and questions >= MIN_QUESTIONS,
            "questions": questions,
        }
    return out

