"""The rule-based rewards: small pure functions with TRL's reward signature, each documented with its formula.

Every one returns a finite float in [0, 1] per completion (or None, "does not apply"), never raises on model
text, and runs at well over 50,000 completions/s (``benchmarks/bench_rewards.py``): work that depends only on
the row (gold answers, context chunks) is cached, because a GRPO group shares its row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from toolkit.rewards.completions import completion_text, extract_answer, row, think_text
from toolkit.rewards.text import (
    STOPWORDS,
    content_tokens,
    gold_forms,
    golds,
    holds_numbers,
    matches,
    normalize,
    token_f1,
)

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
FORMAT_MODES = ("soft", "strict")
LENGTH_UNITS = ("chars", "words")


# ------------------------------------------------------------------------------------------------ answer_match
def answer_match(completions: Sequence[Any], *, partial: bool = False, tolerance: float = 0.0,
                 rel_tolerance: float = 0.0, answer: Sequence[str | None] | None = None,
                 aliases: Sequence[Sequence[str] | None] | None = None, **kwargs: Any) -> list[float | None]:
    """1.0 when the extracted answer matches the gold or an alias (``is_exact_match``; numbers within
    ``tolerance`` absolute or ``rel_tolerance`` relative), else max token F1 over the gold and aliases that are
    not numbers and whose numbers in digits the answer holds (``holds_numbers``) if ``partial``, else 0.0; 0.0
    whenever the text has more than one ``<answer>`` tag; None without gold."""
    check_answer_match(tolerance=tolerance, rel_tolerance=rel_tolerance)

    def score(text: str, gold_list: list[str]) -> float:
        # Measured hack: a policy repeated <answer>X</answer> up to the length limit, hedging across guesses.
        # A second answer tag forfeits the reward outright.
        pred = extract_answer(text) if text.count("<answer>") <= 1 else None
        if not pred:
            return 0.0
        if matches(pred, gold_list, tolerance, rel_tolerance):
            return 1.0
        if not partial:
            return 0.0
        # A numeric gold is matched by value or not at all: a wrong number is no near miss, whatever words it
        # shares with the gold ("-3" shared the "3" once signs were dropped). Text golds get their F1, but only
        # when the answer holds their numbers too: for "38 months" the unit alone ("months") scored 0.67, more
        # than "39 months", and for "minus 11 degrees Celsius" "11 degrees Celsius" 0.86, more than "-11 °C".
        return max((token_f1(pred, g) for g in gold_list
                    if gold_forms(g)[1] is None and holds_numbers(pred, g, tolerance, rel_tolerance)), default=0.0)

    return _score_golds(completions, answer, aliases, score)


def _score_golds(completions: Sequence[Any], answer: Sequence[str | None] | None,
                 aliases: Sequence[Sequence[str] | None] | None,
                 score: Callable[[str, list[str]], float]) -> list[float | None]:
    """``score(text, gold and aliases)`` per completion; None for rows without a gold answer."""
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold = row(answer, i)
        if not isinstance(gold, str) or not gold.strip():
            rewards.append(None)
        else:
            rewards.append(score(completion_text(completion), golds(gold, row(aliases, i))))
    return rewards


# --------------------------------------------------------------------------------------------- reasoning_match
def reasoning_match(completions: Sequence[Any], *, min_words: int = 1, answer: Sequence[str | None] | None = None,
                    aliases: Sequence[Sequence[str] | None] | None = None, **kwargs: Any) -> list[float | None]:
    """1.0 when the closed ``<think>`` block has at least ``min_words`` words and contains the gold or an alias
    as a whole-token phrase (both normalized), else 0.0 (also with no closed think block or several ``<think>``
    tags); None without gold.

    Partial credit for reasoning that found the answer: a small model quotes the answering sentence of the
    context long before it learns to put the right span in ``<answer>``, so this pays early, when answer_match
    is still 0 for every sample of a group and gives GRPO nothing to compare. ``min_words`` keeps it paying for
    a quoted sentence, not for a think that is the answer alone (``<think>Tuscany</think><answer>Tuscany</answer>``).
    """
    check_reasoning_match(min_words=min_words)

    def score(text: str, gold_list: list[str]) -> float:
        if text.count("<think>") != 1 or len(think_text(text).split()) < min_words:
            return 0.0
        think = f" {normalize(think_text(text))} "
        return 1.0 if any(key and f" {key} " in think for key in map(normalize, gold_list)) else 0.0

    return _score_golds(completions, answer, aliases, score)


# --------------------------------------------------------------------------------------------- no_example_copy
def no_example_copy(completions: Sequence[Any], *, examples: Sequence[Sequence[str] | None] | None = None,
                    context: Sequence[Sequence[str] | None] | None = None,
                    question: Sequence[str | None] | None = None, **kwargs: Any) -> list[float | None]:
    """``1 - |(T & E) - Q| / |T|``: T = content tokens of the think block and the extracted answer, E = those of
    the prompt's worked examples (the ``examples`` column: their replies), Q = those of the retrieved context and
    the question. 1.0 when T is empty; None for rows without examples.

    Measured reward hack: a policy rewarded for format copied the one-shot reply verbatim ("It must contain at
    least 80% Sangiovese" for every question), which is perfectly formatted and the easiest formatted reply a
    weak model can write. Words the example shares with this row's context or question are not counted.
    """
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        replies = _text_tuple(row(examples, i))
        if not replies:
            rewards.append(None)
            continue
        text = completion_text(completion)
        tokens = content_tokens(think_text(text)) | content_tokens(extract_answer(text) or "")
        if not tokens:
            rewards.append(1.0)
            continue
        asked = row(question, i)
        own = _tokens_of(_text_tuple(row(context, i)) + ((asked,) if isinstance(asked, str) else ()))
        copied = (tokens & _tokens_of(tuple(_reply_parts(r) for r in replies))) - own
        rewards.append(1.0 - len(copied) / len(tokens))
    return rewards


def _text_tuple(value: Any) -> tuple[str, ...]:
    # A column cell as a tuple of its strings (hashable, for the caches): junk items are dropped, not raised on.
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, (list, tuple)) else ()


def _reply_parts(reply: str) -> str:
    # An example reply scored like a completion: think and answer, not the tag names.
    # Any tag will do: an example that answers without a think block still has tag names to leave out.
    tagged = any(tag in reply for tag in _TAGS)
    return f"{think_text(reply)} {extract_answer(reply) or ''}" if tagged else reply


@functools.lru_cache(maxsize=1024)
def _tokens_of(texts: tuple[str, ...]) -> frozenset[str]:
    # A GRPO group shares its row: the example and context tokens are computed once per distinct row.
    return frozenset().union(*(content_tokens(t) for t in texts))


# ------------------------------------------------------------------------------------------------------ format
def format_reward(completions: Sequence[Any], *, mode: str = "strict", **kwargs: Any) -> list[float]:
    """Format score of each completion.

    strict: 1.0 iff the stripped text is exactly ``<think>T</think>`` then ``<answer>A</answer>``
        (whitespace between), T and A non-blank, each tag present exactly once; else 0.0.
    soft: ``0.25 * #{tags present exactly once} - 0.25 * #{extra tag occurrences}
        - 0.01 * len(text after the first </answer>, stripped)``, clipped to [0, 1] (xmlcount-style).
    """
    check_format(mode=mode)
    score = _strict_format if mode == "strict" else _soft_format
    return [score(completion_text(c)) for c in completions]


def _strict_format(text: str) -> float:
    text = text.strip()
    if not (text.startswith("<think>") and text.endswith("</answer>")) or any(text.count(t) != 1 for t in _TAGS):
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


# ------------------------------------------------------------------------------------------- context_grounding
def context_grounding(completions: Sequence[Any], *, include_reasoning: bool = False, exclude_question: bool = False,
                      context: Sequence[Sequence[str] | None] | None = None,
                      answer: Sequence[str | None] | None = None,
                      question: Sequence[str | None] | None = None, **kwargs: Any) -> list[float | None]:
    """Share of the answer's content words found in the retrieved context.

    ``score = |T & C| / |T|``: T = content tokens (normalized, minus ``STOPWORDS``) of the extracted answer,
    plus the think block's if ``include_reasoning``; C = all chunk tokens. 0.0 when the answer is missing or has
    no content tokens, when there are several ``<answer>`` tags (as in answer_match), or when the normalized gold
    occurs in some chunk but the normalized answer in none. None for rows without context.
    With ``exclude_question``, also 0.0 when every content token of the answer is in the question: such an
    answer echoes the question's subject ("Which grape partners Grenache in GSM?" → "Grenache") — the context
    contains it, so plain grounding would pay for it.
    """
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold = row(answer, i)
        forms = _context_forms(_text_tuple(row(context, i)), gold if isinstance(gold, str) else "")
        if forms is None:
            rewards.append(None)
            continue
        text = completion_text(completion)
        score = _grounding_score(text, forms, include_reasoning)
        asked = row(question, i)
        if score and exclude_question and isinstance(asked, str) and _echoes(text, asked):
            score = 0.0
        rewards.append(score)
    return rewards


def _echoes(text: str, question: str) -> bool:
    tokens = content_tokens(extract_answer(text) or "")
    return bool(tokens) and tokens <= _question_tokens(question)


@functools.lru_cache(maxsize=1024)
def _question_tokens(question: str) -> frozenset[str]:
    return frozenset(content_tokens(question))


@functools.lru_cache(maxsize=1024)
def _context_forms(chunks: tuple[Any, ...], gold: str) -> tuple[str, frozenset[str], bool] | None:
    # Normalizing the chunks is most of the work and a GRPO group shares them: once per distinct row.
    # One string, each normalized chunk padded with spaces so that phrase matches respect token boundaries
    # ("92" is not in "1992"); chunks are joined by a newline, which normalized text never contains, so no
    # phrase matches across two chunks.
    norms = [normalize(c) for c in chunks if isinstance(c, str)]
    if not norms:
        return None
    joined = " " + " \n ".join(norms) + " "
    gold_norm = normalize(gold)
    return joined, frozenset(joined.split()), bool(gold_norm) and f" {gold_norm} " in joined


def _grounding_score(text: str, forms: tuple[str, frozenset[str], bool], include_reasoning: bool) -> float:
    pred = normalize(extract_answer(text) or "") if text.count("<answer>") <= 1 else ""
    tokens = set(pred.split()).difference(STOPWORDS)
    if not tokens:
        return 0.0
    joined, vocab, gold_in_context = forms
    # The answer was there to be read but the model wrote something else: it answered from memory, which is
    # exactly what this reward must not pay for.
    if gold_in_context and f" {pred} " not in joined:
        return 0.0
    if include_reasoning:
        tokens |= content_tokens(think_text(text))
    return len(tokens & vocab) / len(tokens)


# ------------------------------------------------------------------------------------------------------ length
def length(completions: Sequence[Any], *, min_words: int = 1, max_words: float = 60, falloff: float = 60,
           unit: str = "words", max_completion_length: int = 0, overlong_buffer: int = 0,
           completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
    """``band(n) * overlong(t)``, in [0, 1].

    band: n = the completion's length in ``unit`` (whitespace-separated words, or characters); 1.0 for n in
        [min_words, max_words] (the names predate ``unit``: the bounds are in units), outside a linear falloff
        ``1 - distance / falloff`` to the band, clipped at 0.0.
    overlong (DAPO's soft overlong punishment, rescaled to a factor): off when ``max_completion_length`` is 0.
        t = completion tokens, from TRL's ``completion_ids``; 1.0 for t <= L - B, then linear down to 0.0 at
        t = L (L = max_completion_length, B = overlong_buffer). Rows without ``completion_ids`` (scored outside
        training) get no overlong factor.
    """
    check_length(min_words=min_words, max_words=max_words, falloff=falloff, unit=unit,
                 max_completion_length=max_completion_length, overlong_buffer=overlong_buffer)
    texts = [completion_text(c) for c in completions]
    counts = [len(t) for t in texts] if unit == "chars" else [len(t.split()) for t in texts]
    misses = [min_words - n if n < min_words else max(n - max_words, 0) for n in counts]
    scores = [max(0.0, 1.0 - miss / falloff) for miss in misses]
    if max_completion_length and completion_ids is not None:
        start = max_completion_length - overlong_buffer
        for i, ids in enumerate(completion_ids[:len(scores)]):
            n_tokens = len(ids) if hasattr(ids, "__len__") else 0
            if n_tokens > start:
                scores[i] *= max(0.0, (max_completion_length - n_tokens) / overlong_buffer)
    return scores


# -------------------------------------------------------------------------------------------------- repetition
def repetition(completions: Sequence[Any], *, ngram_size: int = 3, max_penalty: float = 1.0,
               **kwargs: Any) -> list[float]:
    """``1 - max_penalty * (1 - unique n-grams / n-grams)`` over lowercased whitespace words, in
    [1 - max_penalty, 1]; 1.0 for texts shorter than ``ngram_size`` words.

    open-r1's ``get_repetition_penalty_reward`` returns ``max_penalty' * (1 - unique / total)`` with a negative
    max_penalty'; this is the same signal shifted by a constant into [0, 1], which GRPO's group-relative
    advantages do not see.
    """
    check_repetition(ngram_size=ngram_size, max_penalty=max_penalty)
    rewards = []
    for completion in completions:
        words = completion_text(completion).lower().split()
        total = len(words) - ngram_size + 1
        if total <= 1:
            rewards.append(1.0)
            continue
        # zip over shifted views builds the n-grams in C; a set of tuples counts the distinct ones. (Measured
        # faster than hashing the words into numpy arrays or interning them as ints, at every realistic length;
        # spelling out the default size saves another fifth.)
        if ngram_size == 3:
            grams = zip(words, words[1:], words[2:], strict=False)
        else:
            grams = zip(*[words[k:] for k in range(ngram_size)], strict=False)
        unique = len(set(grams))
        rewards.append(1.0 - max_penalty * (1.0 - unique / total))
    return rewards


# -------------------------------------------------------------------------------------------------- validation
# Called by build_reward at recipe load and again by the functions themselves, so that a direct call with a bad
# param fails as clearly as a recipe would.
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_answer_match(*, tolerance: Any, rel_tolerance: Any, **_: Any) -> None:
    for key, value in (("tolerance", tolerance), ("rel_tolerance", rel_tolerance)):
        if not (is_number(value) and 0 <= value < float("inf")):
            raise ValueError(f"reward 'answer_match': {key} must be a finite number >= 0, got {value!r}")


def check_reasoning_match(*, min_words: Any, **_: Any) -> None:
    if not (isinstance(min_words, int) and not isinstance(min_words, bool) and min_words >= 1):
        raise ValueError(f"reward 'reasoning_match': min_words must be an integer >= 1, got {min_words!r}")


def check_format(*, mode: Any, **_: Any) -> None:
    if mode not in FORMAT_MODES:
        raise ValueError(f"reward 'format': unknown mode {mode!r} (accepted: {', '.join(FORMAT_MODES)})")


def check_length(*, min_words: Any, max_words: Any, falloff: Any, unit: Any = "words",
                 max_completion_length: Any = 0, overlong_buffer: Any = 0, **_: Any) -> None:
    for key, value in (("min_words", min_words), ("max_words", max_words), ("falloff", falloff)):
        if not is_number(value):
            raise ValueError(f"reward 'length': {key} must be a number, got {value!r}")
    # An infinite or NaN min_words would score every completion 0; an infinite max_words (no upper bound) or
    # falloff (no penalty past the band) is a legitimate choice.
    if not 0 <= min_words < float("inf"):
        raise ValueError(f"reward 'length': min_words must be a finite number >= 0, got {min_words!r}")
    if not min_words <= max_words:
        raise ValueError(f"reward 'length': min_words ({min_words}) > max_words ({max_words})")
    if not falloff > 0:
        raise ValueError(f"reward 'length': falloff must be > 0, got {falloff!r}")
    if unit not in LENGTH_UNITS:
        raise ValueError(f"reward 'length': unknown unit {unit!r} (accepted: {', '.join(LENGTH_UNITS)})")
    for key, value in (("max_completion_length", max_completion_length), ("overlong_buffer", overlong_buffer)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"reward 'length': {key} must be an integer >= 0, got {value!r}")
    if overlong_buffer and not max_completion_length:
        raise ValueError(f"reward 'length': overlong_buffer {overlong_buffer} does nothing without "
                         "max_completion_length (the overlong penalty is off at 0); set that to the recipe's "
                         "training.max_completion_length")
    if max_completion_length and not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(f"reward 'length': overlong_buffer must be in [1, max_completion_length "
                         f"({max_completion_length})], got {overlong_buffer!r}")


def check_repetition(*, ngram_size: Any, max_penalty: Any, **_: Any) -> None:
    if not (isinstance(ngram_size, int) and not isinstance(ngram_size, bool) and ngram_size >= 1):
        raise ValueError(f"reward 'repetition': ngram_size must be an integer >= 1, got {ngram_size!r}")
    if not (is_number(max_penalty) and 0 < max_penalty <= 1):
        raise ValueError(f"reward 'repetition': max_penalty must be in (0, 1], got {max_penalty!r}")
