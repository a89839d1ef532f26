"""Reward functions for GRPO on retrieval-grounded QA (``<think>…</think><answer>…</answer>``).

Contract, TRL's reward signature::

    reward(completions, *, <own params>, <dataset columns> = None, **kwargs) -> list[float | None]

* ``completions``: one item per sample, a string or a conversational completion
  (a list of ``{"role", "content"}`` messages; the last message is scored).
* Dataset columns (``answer``, ``aliases``, ``context``, ...) arrive as keyword lists
  parallel to ``completions``; unused columns and TRL extras fall into ``**kwargs``.
* ``None`` means "does not apply to this sample" (no gold, no context): TRL leaves it
  out of the weighted sum instead of counting a 0.
* Built-in scores are finite floats in [0, 1], and no reward raises on model text,
  whatever it is. A reward that does raise, or returns NaN/inf, stops the run with a
  ``RewardError`` naming the reward and the sample (see ``BoundReward``).

Recipes name rewards by their ``REWARDS`` key, or a custom ``module:function`` /
``file.py:function``; ``build_reward`` binds a recipe's params and rejects typos and bad
values before any GPU time is spent. Formulas, ranges and examples: docs/rewards.md.

Layout: ``text`` (normalization, answer extraction, matching: shared with the evaluator),
``builtin`` (rule-based rewards), ``model_based`` (embedding similarity, reward model),
``custom`` (loading user functions), ``registry`` (REWARDS, build_reward, BoundReward),
``__main__`` (``python -m toolkit.rewards``: score one completion against a recipe).
"""

from toolkit.rewards.builtin import (
    answer_match,
    context_grounding,
    format_reward,
    length,
    no_example_copy,
    reasoning_match,
    repetition,
)
from toolkit.rewards.completions import completion_text, extract_answer
from toolkit.rewards.custom import default_label
from toolkit.rewards.model_based import RewardModel, SemanticMatch
from toolkit.rewards.registry import (
    MODEL_BASED,
    REWARDS,
    BoundReward,
    RewardError,
    accepted_params,
    build_reward,
)
from toolkit.rewards.text import STOPWORDS, is_exact_match, normalize, token_f1

__all__ = [
    "MODEL_BASED", "REWARDS", "STOPWORDS", "BoundReward", "RewardError", "RewardModel", "SemanticMatch",
    "accepted_params", "answer_match", "build_reward", "completion_text", "context_grounding", "default_label",
    "extract_answer", "format_reward", "is_exact_match", "length", "no_example_copy", "normalize", "reasoning_match",
    "repetition", "token_f1",
]
