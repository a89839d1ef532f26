"""Reward functions for GRPO on retrieval-grounded QA (``<think>…</think><answer>…</answer>``).

Contract, TRL's reward signature::

    reward(completions, *, <own params>, <dataset columns> = None, **kwargs) -> list[float | None]

* ``completions``: one item per sample, a string or a conversational completion
  (a list of ``{"role", "content"}`` messages; the last message is scored).
* Dataset columns (``answer``, ``aliases``, ``context``, ...) arrive as keyword lists
  parallel to ``completions``; unused columns and TRL extras fall into ``**kwargs``.
* ``None`` means "does not apply to this sample" (no gold, no context): TRL leaves it
  out of the weighted sum instead of counting a 0.
* Scores are finite floats in [0, 1], and no reward raises on model text, whatever
  it is: one exception would kill a whole training step.

Recipes name rewards by their ``REWARDS`` key; ``build_reward`` binds a recipe's params
and rejects typos and bad values before any GPU time is spent. The public helpers are
shared with the evaluator so that training and evaluation agree on "correct".
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

_ARTICLES = frozenset({"a", "an", "the"})
# Small on purpose: it only has to stop glue words from counting as "grounded".
STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for",
    "with", "from", "as", "into", "about", "is", "are", "was", "were", "be", "been", "being",
    "it", "its", "this", "that", "these", "those", "which", "who", "what", "there", "their",
    "they", "he", "she", "his", "her", "has", "have", "had", "do", "does", "did", "so", "than"})
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_MODES = ("soft", "strict")
# Filled in by TRL from the batch; a recipe binding them would silently shadow data.
_DATASET_COLUMNS = frozenset({"completions", "prompts", "completion_ids", "answer", "aliases",
                              "context", "question", "context_ids"})
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?", re.ASCII)


# --------------------------------------------------------------------- helpers
def completion_text(completion: Any) -> str:
    """Text of one completion: a string as is, else the last message's content."""
    if isinstance(completion, (list, tuple)):
        completion = completion[-1] if completion else ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content given as typed parts
            return "".join(p["text"] for p in content
                           if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def normalize(text: str) -> str:
    """SQuAD-style answer normalization, plus accent folding ("Nebbióló" == "nebbiolo")."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch
                   for ch in text if not unicodedata.combining(ch))
    return " ".join(tok for tok in text.split() if tok not in _ARTICLES)


def extract_answer(text: str) -> str | None:
    """First ``<answer>`` block's content; else what follows the last ``</think>``."""
    # str.find, not a regex: a lazy regex goes quadratic on many unclosed tags.
    start = text.find("<answer>")
    if start != -1:
        end = text.find("</answer>", start)
        if end != -1:
            return text[start + len("<answer>"):end].strip()
    _, closed, tail = text.rpartition("</think>")
    return (tail.strip() or None) if closed else None


def _key(text: str) -> str:
    # Article-only golds ("A" in multiple choice) normalize to nothing; keep the raw
    # text so they are not matched by any answer made of punctuation.
    return normalize(text) or text.strip().lower()


def _number(match: re.Match[str] | None) -> float | None:
    # _NUMBER only admits ASCII digits, so float() cannot fail; a huge one overflows
    # to inf, which is no usable number.
    value = float(match.group().replace(",", "")) if match else math.inf
    return value if math.isfinite(value) else None


def _golds(answer: Any, aliases: Any) -> list[str]:
    if isinstance(aliases, str):
        aliases = [aliases]
    candidates = [answer, *(aliases if isinstance(aliases, (list, tuple)) else [])]
    return [g for g in candidates if isinstance(g, str) and g.strip()]


def is_exact_match(text: str, answer: str | None, aliases: Sequence[str] | None = None) -> bool:
    """Normalized extracted answer equals the gold or an alias, given exactly once.

    A numeric gold also matches when the answer's first number equals it, because
    models like to add units ("92 points" for "92", "$25" for "25"). Several
    ``<answer>`` tags never match: hedging across guesses is not an answer (and a
    measured reward hack repeated the tag up to the length limit).
    """
    if text.count("<answer>") > 1:
        return False
    pred = extract_answer(text)
    if not pred:
        return False
    key, number = _key(pred), _number(_NUMBER.search(pred))
    for gold in _golds(answer, aliases):
        if _key(gold) == key:
            return True
        # Gold counts as numeric when it is just a number, maybe with currency/percent.
        gold_number = _number(_NUMBER.fullmatch(gold.strip().strip("$€£%").strip()))
        if gold_number is not None and gold_number == number:
            return True
    return False


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 on normalized tokens (1.0 when both are empty)."""
    pred_toks, gold_toks = normalize(pred).split(), normalize(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_toks), common / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _row(column: Sequence[Any] | None, i: int) -> Any:
    # Tolerate short or absent columns: a missing value means "does not apply".
    return column[i] if column is not None and i < len(column) else None


# --------------------------------------------------------------------- rewards
def answer_match(completions: Sequence[Any], *, partial: bool = False,
                 answer: Sequence[str | None] | None = None,
                 aliases: Sequence[Sequence[str] | None] | None = None, **kwargs: Any,
                 ) -> list[float | None]:
    """1.0 on ``is_exact_match``, else max token F1 over gold+aliases if ``partial``,
    else 0.0; 0.0 whenever the text has more than one ``<answer>`` tag; None without gold."""
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold, alts = _row(answer, i), _row(aliases, i)
        if not isinstance(gold, str) or not gold.strip():
            rewards.append(None)
            continue
        rewards.append(_answer_score(completion_text(completion), gold, alts, partial))
    return rewards


def _answer_score(text: str, gold: str, aliases: Any, partial: bool) -> float:
    # Measured hack: a policy repeated <answer>X</answer> up to the length limit,
    # hedging across guesses. A second answer tag forfeits the reward outright.
    if text.count("<answer>") > 1:
        return 0.0
    if is_exact_match(text, gold, aliases):
        return 1.0
    pred = extract_answer(text)
    if not partial or not pred:
        return 0.0
    return max(token_f1(pred, g) for g in _golds(gold, aliases))


def format_reward(completions: Sequence[Any], *, mode: str = "strict", **kwargs: Any) -> list[float]:
    """Format score of each completion.

    strict: 1.0 iff the stripped text is exactly ``<think>T</think>`` then
        ``<answer>A</answer>`` (whitespace between), T and A non-blank, each tag
        present exactly once; else 0.0.
    soft: ``0.25 * #{tags present exactly once} - 0.25 * #{extra tag occurrences}
        - 0.01 * len(text after the first </answer>, stripped)``, clipped to [0, 1].
    """
    _check_format(mode=mode)
    score = _strict_format if mode == "strict" else _soft_format
    return [score(completion_text(c)) for c in completions]


def _strict_format(text: str) -> float:
    text = text.strip()
    if (any(text.count(tag) != 1 for tag in _TAGS)
            or not (text.startswith("<think>") and text.endswith("</answer>"))):
        return 0.0
    think_end, answer_start = text.find("</think>"), text.find("<answer>")
    think = text[len("<think>"):think_end]
    gap = text[think_end + len("</think>"):answer_start]
    answer = text[answer_start + len("<answer>"):-len("</answer>")]
    ok = think_end < answer_start and think.strip() and answer.strip() and not gap.strip()
    return 1.0 if ok else 0.0


def _soft_format(text: str) -> float:
    counts = [text.count(tag) for tag in _TAGS]
    score = 0.25 * sum(c == 1 for c in counts) - 0.25 * sum(max(c - 1, 0) for c in counts)
    _, closed, trailing = text.partition("</answer>")
    if closed:
        score -= 0.01 * len(trailing.strip())
    return min(max(score, 0.0), 1.0)


def _content_tokens(text: str) -> set[str]:
    return {tok for tok in normalize(text).split() if tok not in STOPWORDS}


def _chunks(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for c in value if isinstance(c, str)]
    return []


def context_grounding(completions: Sequence[Any], *, include_reasoning: bool = False,
                      context: Sequence[Sequence[str] | None] | None = None,
                      answer: Sequence[str | None] | None = None,
                      **kwargs: Any) -> list[float | None]:
    """Share of the answer's content words found in the retrieved context.

    ``score = |T & C| / |T|``: T = content tokens (normalized, minus ``STOPWORDS``) of the
    extracted answer, plus the think block's if ``include_reasoning``; C = all chunk tokens.
    0.0 when the answer is missing or has no content tokens, or when the normalized gold
    occurs in some chunk but the normalized answer in none. None for rows without context.
    """
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        chunks = _chunks(_row(context, i))
        if not chunks:
            rewards.append(None)
            continue
        text = completion_text(completion)
        rewards.append(_grounding_score(text, chunks, _row(answer, i), include_reasoning))
    return rewards


def _grounding_score(text: str, chunks: list[str], gold: Any, include_reasoning: bool) -> float:
    pred = extract_answer(text)
    tokens = _content_tokens(pred or "")
    if not tokens:
        return 0.0
    # Padded so that matches respect token boundaries ("92" is not in "1992").
    padded = [f" {normalize(c)} " for c in chunks]
    gold_norm = normalize(gold) if isinstance(gold, str) else ""
    # The answer was there to be read but the model wrote something else: it
    # answered from memory, which is exactly what this reward must not pay for.
    if (gold_norm and any(f" {gold_norm} " in c for c in padded)
            and not any(f" {normalize(pred)} " in c for c in padded)):
        return 0.0
    if include_reasoning:
        start = text.find("<think>")
        end = text.find("</think>", start) if start != -1 else -1
        tokens |= _content_tokens(text[start + len("<think>"):end] if end != -1 else "")
    vocab = {tok for c in padded for tok in c.split()}
    return len(tokens & vocab) / len(tokens)


def length(completions: Sequence[Any], *, min_words: int = 1, max_words: int = 60,
           falloff: float = 60, **kwargs: Any) -> list[float]:
    """1.0 for a whitespace word count n in [min_words, max_words]; outside, linear
    falloff ``1 - distance / falloff`` to the band, clipped at 0.0."""
    _check_length(min_words=min_words, max_words=max_words, falloff=falloff)
    counts = [len(completion_text(c).split()) for c in completions]
    misses = [min_words - n if n < min_words else max(n - max_words, 0) for n in counts]
    return [max(0.0, 1.0 - miss / falloff) for miss in misses]


# ------------------------------------------------------------------ validation
def _check_format(*, mode: Any, **_: Any) -> None:
    if mode not in _FORMAT_MODES:
        accepted = ", ".join(_FORMAT_MODES)
        raise ValueError(f"reward 'format': unknown mode {mode!r} (accepted: {accepted})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_length(*, min_words: Any, max_words: Any, falloff: Any, **_: Any) -> None:
    for key, value in (("min_words", min_words), ("max_words", max_words), ("falloff", falloff)):
        if not _is_number(value):
            raise ValueError(f"reward 'length': {key} must be a number, got {value!r}")
    if not min_words <= max_words:
        raise ValueError(f"reward 'length': min_words ({min_words}) > max_words ({max_words})")
    if not falloff > 0:
        raise ValueError(f"reward 'length': falloff must be > 0, got {falloff!r}")


REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "answer_match": answer_match, "format": format_reward,
    "context_grounding": context_grounding, "length": length}
_VALIDATORS: dict[str, Callable[..., None]] = {"format": _check_format, "length": _check_length}


def _lookup(name: Any) -> Callable[..., list[float | None]]:
    if isinstance(name, str) and name in REWARDS:
        return REWARDS[name]
    close = difflib.get_close_matches(name, REWARDS, n=1) if isinstance(name, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown reward {name!r}; {hint}known: {', '.join(sorted(REWARDS))}")


def _own_params(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only params a recipe may set, with their defaults."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _DATASET_COLUMNS}


def accepted_params(name: str) -> list[str]:
    """Sorted names of the params a recipe may set for reward ``name``."""
    return sorted(_own_params(_lookup(name)))


def _check_kind(name: str, key: str, value: Any, default: Any) -> None:
    # The default's type is the param's kind; YAML makes "true" vs true easy to get wrong.
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "a bool"
    elif _is_number(default):
        ok, kind = _is_number(value), "a number"
    else:
        ok, kind = isinstance(value, type(default)), type(default).__name__
    if not ok:
        raise ValueError(f"reward {name!r}: param {key!r} must be {kind}, got {value!r}")


def build_reward(
    name: str, params: dict[str, Any] | None = None, label: str | None = None
) -> Callable[..., list[float | None]]:
    """TRL reward function for recipe entry ``name`` with ``params`` bound, called ``label`` (default: ``name``)
    in logs, so one reward can appear twice with different params.

    One-line ValueError on an unknown name, unknown param or bad value: a broken
    recipe should fail at load time, not an hour into training."""
    fn = _lookup(name)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TypeError(f"reward {name!r}: params must be a mapping, got {type(params).__name__}")
    defaults = _own_params(fn)
    for key, value in params.items():
        if key not in defaults:
            raise ValueError(f"reward {name!r}: unknown param {key!r} "
                             f"(accepted: {', '.join(sorted(defaults)) or 'none'})")
        _check_kind(name, key, value, defaults[key])
    if name in _VALIDATORS:
        _VALIDATORS[name](**{**defaults, **params})
    logger.debug("built reward %s with params %s", name, params)
    return BoundReward(fn, params, label or name)


class BoundReward:
    """A reward with its recipe params bound. Not a functools.partial: TRL names a partial after the function it
    wraps, so two entries of one reward (say strict and soft format) would be logged under the same name."""

    def __init__(self, fn: Callable[..., list[float | None]], params: dict[str, Any], name: str):
        self.fn, self.params, self.__name__ = fn, dict(params), name
        self.__doc__ = fn.__doc__

    def __call__(self, completions, **kwargs) -> list[float | None]:
        return self.fn(completions, **self.params, **kwargs)

    def __repr__(self) -> str:
        return f"BoundReward({self.__name__}: {self.fn.__name__}(**{self.params}))"
