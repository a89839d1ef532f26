"""Tests for toolkit.rewards: hand-written tables per reward plus fuzzing properties."""

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.rewards import (
    REWARDS,
    accepted_params,
    answer_match,
    build_reward,
    completion_text,
    context_grounding,
    extract_answer,
    format_reward,
    is_exact_match,
    length,
    no_example_copy,
    normalize,
    reasoning_match,
    token_f1,
)

CLEAN = "<think>The doc says Nebbiolo.</think><answer>Nebbiolo</answer>"
# The measured hack: the same answer tag repeated until the length limit.
REPEATED = "<think>The doc says Nebbiolo.</think>" + "\n<answer>Nebbiolo</answer>" * 10
SEVERAL = "<think>Either one.</think><answer>Nebbiolo</answer><answer>Barbera</answer>"
CONTEXT = ["Barolo is made from Nebbiolo grapes.", "Barbaresco lies north-east of Alba."]
COLUMNS = {"answer": ["Nebbiolo"], "aliases": [["Spanna"]], "context": [CONTEXT],
           "examples": [["<think>It must contain at least 80% Sangiovese.</think><answer>Sangiovese</answer>"]]}
VARIANTS = [
    ("answer_match", {}), ("answer_match", {"partial": True}), ("format", {}),
    ("format", {"mode": "soft"}), ("context_grounding", {}),
    ("context_grounding", {"include_reasoning": True}), ("context_grounding", {"exclude_question": True}),
    ("length", {}),
    ("length", {"min_words": 3, "max_words": 5, "falloff": 2.5}),
    ("length", {"unit": "chars", "max_completion_length": 64, "overlong_buffer": 16}),
    ("repetition", {}), ("repetition", {"ngram_size": 1, "max_penalty": 0.5}), ("reasoning_match", {}),
    ("no_example_copy", {}),
]


def chat(text):
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------- helpers
@pytest.mark.parametrize(("text", "expected"), [
    ("the  NEBBIÓLO.", "nebbiolo"),
    ("An apple, a day!", "apple day"),
    ("Müller-Thurgau", "muller thurgau"),
    ("  THE  ", ""),
    ("", ""),
    ("Theory", "theory"),
    ("🍷 wine", "🍷 wine"),
    # ASCII punctuation outside Unicode's P category goes too, as SQuAD strips string.punctuation; other
    # symbols stay.
    ("`Nebbiolo`", "nebbiolo"),
    ("Nebbiolo~", "nebbiolo"),
    ("$ + < = > ^ | x", "x"),
    ("€25 £3", "€25 £3"),
    # A number keeps its sign (as the typeset minus) and loses its thousands separators; a range's hyphen goes.
    ("-3", "\u22123"), ("−3 °C", "\u22123 °c"), ("1,000 metres", "1000 metres"), ("1990-1995", "1990 1995"),
    ("1,2", "1 2"),
    # Letters that are capitals only once decomposed (mathematical bold, letterlike symbols) are lowercased too.
    ("𝐁𝐚𝐫𝐨𝐥𝐨", "barolo"), ("ℌ", "h"),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (CLEAN, "Nebbiolo"),
    ("<answer> a </answer><answer>b</answer>", "a"),
    ("<think>t</think>  Nebbiolo \n", "Nebbiolo"),
    ("<think>a</think>x</think> y ", "y"),
    ("<think>t</think>   ", None),
    ("<think>t</think><answer>cut off", "<answer>cut off"),
    ("</answer>x<answer>y", None),
    ("<answer></answer>", ""),
    ("Nebbiolo", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("completion", "expected"), [
    ("plain", "plain"),
    (chat("msg"), "msg"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "a"),
    ([{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"text": "y"}]}], "xy"),
    ([], ""),
    ([{"role": "assistant", "content": None}], ""),
    (None, ""),
])
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("Pinot Noir grape", "Pinot Noir", 0.8),
    ("Pinot Noir", "Pinot Noir", 1.0),
    ("the Pinot", "Pinot Noir", 2 / 3),
    ("Merlot", "Pinot Noir", 0.0),
    ("", "Pinot", 0.0),
    ("the", "a", 0.0),  # an article-only gold ("A" in multiple choice) is compared whole, as in exact match
    ("A", "a", 1.0),
    ("A.", "A", 1.0),  # punctuation around a multiple-choice letter still matches it
    ("(A)", "A", 1.0),
    ("", "", 1.0),
    ("-3", "3", 0.0),  # the sign is part of the token
    ("1,500", "1,000", 0.0),  # no shared "1" once the separators go
])
def test_token_f1(pred, gold, expected):
    assert token_f1(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "answer", "aliases", "expected"), [
    ("<answer>92 points</answer>", "92", None, True),
    ("<answer>$25</answer>", "25", None, True),
    ("<answer>25</answer>", "$25", None, True),
    ("<answer>about 1,000 metres</answer>", "1000", None, True),
    ("<answer>3.50</answer>", "3.5", None, True),
    ("<answer>1992</answer>", "92", None, False),
    ("<answer>92 points</answer>", "ninety-two", ["92"], True),
    ("<answer>A</answer>", "A", None, True),
    ("<answer>.</answer>", "A", None, False),
    ("<answer>" + "9" * 500 + "</answer>", "9" * 400, None, False),
    ("<answer>x</answer>", None, None, False),
])
def test_is_exact_match(text, answer, aliases, expected):
    assert is_exact_match(text, answer, aliases) is expected


# ------------------------------------------------------------------ answer_match
@pytest.mark.parametrize(("text", "answer", "aliases", "partial", "expected"), [
    (CLEAN, "Nebbiolo", [], False, 1.0),
    ("<think>x</think><answer>the  NEBBIÓLO.</answer>", "Nebbiolo", [], False, 1.0),
    ("<answer>Spanna</answer>", "Nebbiolo", ["Spanna", "Chiavennasca"], False, 1.0),
    ("<answer>92 points</answer>", "92", None, False, 1.0),
    ("<think>t</think> Nebbiolo", "Nebbiolo", None, False, 1.0),
    ("<think>It is Nebbiolo.</think><answer>Barbera</answer>", "Nebbiolo", [], False, 0.0),
    ("<think>It is Nebbiolo.</think><answer>Barbera</answer>", "Nebbiolo", [], True, 0.0),
    (SEVERAL, "Nebbiolo", [], False, 0.0),
    (REPEATED, "Nebbiolo", [], True, 0.0),
    ("Nebbiolo", "Nebbiolo", [], False, 0.0),
    ("", "Nebbiolo", [], True, 0.0),
    ("<answer>Pinot Noir grape</answer>", "Pinot Noir", [], False, 0.0),
    ("<answer>Pinot Noir grape</answer>", "Pinot Noir", [], True, 0.8),
    ("<answer>Spanna grape</answer>", "Nebbiolo", ["Spanna"], True, 2 / 3),
    ("<answer>Nebbiolo 🍇</answer>", "Nebbiolo", [], False, 0.0),
    ("<answer>🍷</answer>", "🍷", [], False, 1.0),
    ("<answer>`Nebbiolo`</answer>", "Nebbiolo", [], False, 1.0),  # quoted as Markdown code
    ("<answer>Nebbiolo~</answer>", "Nebbiolo", [], False, 1.0),
    ("<answer>The</answer>", "A", [], True, 0.0),  # no partial credit for an article against an article gold
    ("<answer>.</answer>", "A", [], True, 0.0),
    ("<answer>(A)</answer>", "A", [], False, 1.0),
])
def test_answer_match(text, answer, aliases, partial, expected):
    scores = answer_match([text], partial=partial, answer=[answer], aliases=[aliases])
    assert scores == [pytest.approx(expected)]


@pytest.mark.parametrize(("answer", "expected"), [
    (None, [None, None]),
    ([None, "Nebbiolo"], [None, 1.0]),
    (["  ", "Nebbiolo"], [None, 1.0]),
    (["Nebbiolo"], [1.0, None]),
])
def test_answer_match_rows_without_answer(answer, expected):
    assert answer_match([CLEAN, CLEAN], answer=answer) == expected


# ------------------------------------------------------------------------ format
@pytest.mark.parametrize(("text", "expected"), [
    (CLEAN, 1.0),
    ("  <think>a</think>\n\n<answer>b</answer>\n", 1.0),
    ("Sure! <think>a</think><answer>b</answer>", 0.0),
    ("<think>a</think><answer>b</answer> Hope this helps", 0.0),
    ("<think>a</think> so <answer>b</answer>", 0.0),
    ("<think> </think><answer>b</answer>", 0.0),
    ("<think>a</think><answer>\n</answer>", 0.0),
    ("<answer>b</answer>", 0.0),
    ("<answer>b</answer><think>a</think>", 0.0),
    ("<think><answer>b</answer></think>", 0.0),
    ("<think>a<think>b</think><answer>c</answer>", 0.0),
    (SEVERAL, 0.0),
    (REPEATED, 0.0),
    ("", 0.0),
])
def test_format_strict(text, expected):
    assert format_reward([text]) == [expected]
    assert format_reward([text], mode="strict") == [expected]


@pytest.mark.parametrize(("text", "expected"), [
    (CLEAN, 1.0),
    ("<answer>b</answer>", 0.5),
    ("<think>a</think>", 0.5),
    ("<think>a</think><answer>b</answer> trailing", 0.92),
    ("Sure! <think>a</think><answer>b</answer>", 1.0),
    ("<think>a<think>b</think><answer>c</answer>", 0.5),
    ("<think>a</think><think>b</think><answer>c</answer>", 0.0),
    (SEVERAL, 0.0),
    (REPEATED, 0.0),
    ("", 0.0),
])
def test_format_soft(text, expected):
    assert format_reward([text], mode="soft") == [pytest.approx(expected)]


def test_format_soft_penalises_several_answers():
    soft = format_reward([CLEAN, SEVERAL, "<think>t</think><answer>a</answer><answer>b"], mode="soft")
    assert soft[1] < soft[0] and soft[2] < soft[0]


# ------------------------------------------------------------- context_grounding
@pytest.mark.parametrize(("text", "chunks", "answer", "reasoning", "expected"), [
    (CLEAN, CONTEXT, "Nebbiolo", False, 1.0),
    ("<answer>the NEBBIÓLO!</answer>", ["Barolo: nebbiolo."], "Nebbiolo", False, 1.0),
    ("<answer>Nebbiolo grape variety</answer>", CONTEXT, None, False, 1 / 3),
    ("<answer>Sangiovese</answer>", CONTEXT, "Nebbiolo", False, 0.0),
    # every token is in the context, but the answer phrase is not while the gold is
    ("<answer>made Barolo</answer>", CONTEXT, "Nebbiolo", False, 0.0),
    ("<answer>made Barolo</answer>", CONTEXT, None, False, 1.0),
    ("<answer>made Barolo</answer>", CONTEXT, "Brunello", False, 1.0),
    ("<think>Barolo uses Nebbiolo, I recall Sangiovese.</think><answer>Nebbiolo</answer>",
     CONTEXT, "Nebbiolo", False, 1.0),
    ("<think>Barolo uses Nebbiolo, I recall Sangiovese.</think><answer>Nebbiolo</answer>",
     CONTEXT, "Nebbiolo", True, 2 / 6),
    ("<answer>the of and</answer>", CONTEXT, None, False, 0.0),
    ("<think>Nebbiolo</think>", CONTEXT, None, True, 0.0),
    ("", CONTEXT, "Nebbiolo", False, 0.0),
    ("<answer>Nebbiolo</answer>", "Barolo is Nebbiolo.", None, False, 1.0),
])
def test_context_grounding(text, chunks, answer, reasoning, expected):
    scores = context_grounding([text], include_reasoning=reasoning, context=[chunks], answer=[answer])
    assert scores == [pytest.approx(expected)]


@pytest.mark.parametrize(("text", "question", "expected"), [
    ("<answer>Barolo</answer>", "Which grape is Barolo made from?", 0.0),          # echoes the subject
    ("<answer>the BARÓLO</answer>", "Which grape is Barolo made from?", 0.0),
    ("<answer>Nebbiolo</answer>", "Which grape is Barolo made from?", 1.0),
    ("<answer>Nebbiolo grapes</answer>", "Which grape is Barolo made from?", 1.0),  # a new word: not an echo
    ("<answer>Barolo</answer>", None, 1.0),                                         # no question column
])
def test_context_grounding_exclude_question(text, question, expected):
    scores = context_grounding([text], exclude_question=True, context=[CONTEXT], question=[question])
    assert scores == [pytest.approx(expected)]
    # off by default: the same answer keeps its grounding score
    assert context_grounding([text], context=[CONTEXT], question=[question])[0] > 0


@pytest.mark.parametrize("context", [None, [None, None], [[], []], [[None], [None]]])
def test_context_grounding_none_without_context(context):
    assert context_grounding([CLEAN, CLEAN], context=context, answer=["Nebbiolo"] * 2) == [None, None]


# --------------------------------------------------------------- reasoning_match
@pytest.mark.parametrize(("text", "expected"), [
    (CLEAN, 1.0),
    ("<think>Barolo is made from NEBBIÓLO grapes.</think><answer>Barbera</answer>", 1.0),  # the answer is not scored
    ("<think>It is called Spanna in the north.</think>", 1.0),                          # an alias
    ("<think>Barolo is a red wine.</think><answer>Nebbiolo</answer>", 0.0),               # found only in the answer
    ("<think>Nebbiolos are grapes</think>", 0.0),                                        # whole tokens only
    ("<think>Barolo is made from Nebbiolo", 0.0),                                        # never closed
    ("<think>Nebbiolo</think><think>again</think>", 0.0),
    ("Nebbiolo", 0.0),
])
def test_reasoning_match(text, expected):
    assert reasoning_match([text], answer=["Nebbiolo"], aliases=[["Spanna"]]) == [expected]


def test_reasoning_match_min_words_pays_a_quoted_sentence_not_the_answer_alone():
    short = "<think>Nebbiolo</think><answer>Nebbiolo</answer>"
    assert reasoning_match([short, CLEAN], answer=["Nebbiolo"] * 2) == [1.0, 1.0]
    assert reasoning_match([short, CLEAN], min_words=4, answer=["Nebbiolo"] * 2) == [0.0, 1.0]
    with pytest.raises(ValueError, match="reward 'reasoning_match': min_words must be an integer >= 1, got 0"):
        reasoning_match([CLEAN], min_words=0, answer=["Nebbiolo"])


def test_reasoning_match_none_without_gold():
    assert reasoning_match([CLEAN, CLEAN], answer=[None, " "]) == [None, None]


# --------------------------------------------------------------- no_example_copy
EXAMPLE = "<think>It must contain at least 80% Sangiovese.</think><answer>Sangiovese</answer>"


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>It must contain at least 80% Sangiovese</think><answer>Sangiovese</answer>", 0.0),  # the hack
    (EXAMPLE + " and more", 0.0),
    (CLEAN, 1.0),
    ("<think>It must be Nebbiolo.</think><answer>Nebbiolo</answer>", 0.5),   # "must" is the example's word
    ("<think>Barolo contains Nebbiolo.</think><answer>Nebbiolo</answer>", 1.0),  # "contains" != "contain"
    ("<think>Made from grapes.</think><answer>Sangiovese</answer>", 2 / 3),  # made, grapes: in the context
    ("<think></think><answer></answer>", 1.0),
    ("", 1.0),
])
def test_no_example_copy(text, expected):
    scores = no_example_copy([text], examples=[[EXAMPLE]], context=[CONTEXT], question=["Which grape is Barolo?"])
    assert scores == [pytest.approx(expected)]


def test_no_example_copy_does_not_count_words_of_the_row():
    # The example's words that this row's context or question also uses are the row's own words.
    context = [["Chianti must contain at least 80% Sangiovese."]]
    assert no_example_copy([EXAMPLE], examples=[[EXAMPLE]], context=context) == [1.0]
    assert no_example_copy([EXAMPLE], examples=[[EXAMPLE]], question=["Must it contain 80% Sangiovese?"]) == [
        pytest.approx(0.8)]  # only "least" is copied


def test_an_example_without_a_think_block_does_not_count_its_tag_names():
    # "answer" is a tag name in "<answer>Sangiovese</answer>", not a word the example would teach.
    reply = "<think>The answer is Merlot</think><answer>Merlot</answer>"
    scores = no_example_copy([reply], examples=[["<answer>Sangiovese</answer>"]],
                             context=[["Pomerol is mostly Merlot."]], question=["Which grape dominates Pomerol?"])
    assert scores == [1.0]


@pytest.mark.parametrize("examples", [None, [None], [[]], [[None]]])
def test_no_example_copy_none_without_examples(examples):
    assert no_example_copy([CLEAN], examples=examples, context=[CONTEXT]) == [None]


# ------------------------------------------------------------------------ length
@pytest.mark.parametrize(("n_words", "params", "expected"), [
    (3, {}, 1.0),
    (60, {}, 1.0),
    (0, {}, 1 - 1 / 60),
    (70, {}, 1 - 10 / 60),
    (200, {}, 0.0),
    (3, {"min_words": 5, "max_words": 10, "falloff": 4}, 0.5),
    (12, {"min_words": 5, "max_words": 10, "falloff": 4}, 0.5),
    (20, {"min_words": 5, "max_words": 10, "falloff": 4}, 0.0),
    (5000, {"min_words": 5, "max_words": float("inf"), "falloff": 4}, 1.0),  # no upper bound
    (0, {"min_words": 5, "falloff": float("inf")}, 1.0),  # no penalty outside the band
])
def test_length(n_words, params, expected):
    assert length([" ".join(["w"] * n_words)], **params) == [pytest.approx(expected)]


# ------------------------------------------------------------ reward hacking
@pytest.mark.parametrize(("name", "params"), [
    ("answer_match", {}), ("answer_match", {"partial": True}), ("format", {"mode": "strict"}),
    ("format", {"mode": "soft"}), ("length", {"max_words": 8, "falloff": 10}),
])
def test_repeated_answer_scores_below_clean(name, params):
    clean, repeated = build_reward(name, params)([CLEAN, REPEATED], answer=["Nebbiolo"] * 2)
    assert repeated < clean


# ------------------------------------------------------------ robustness
@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_conversational_and_string_completions_agree(name, params):
    texts = [CLEAN, REPEATED, SEVERAL, "", "<think>t</think> Spanna", "🍇🍷 <answer>é</answer>"]
    columns = {key: value * len(texts) for key, value in COLUMNS.items()}
    reward = build_reward(name, params)
    assert reward(texts, **columns) == reward([chat(t) for t in texts], **columns)


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_huge_adversarial_text(name, params):
    # Tags are found by string search, not backtracking regexes, so these finish at once (speed is not asserted).
    texts = ["word " * 20_000, "<answer>" * 12_500, "<think>" * 14_000 + "</answer>" * 100,
             "<think>" + "é" * 100_000 + "</think><answer>Nebbiolo</answer>", "9," * 50_000]
    columns = {key: value * len(texts) for key, value in COLUMNS.items()}
    scores = build_reward(name, params)(texts, **columns)
    assert len(scores) == len(texts)
    assert all(0.0 <= s <= 1.0 for s in scores)


TAG_SOUP = st.lists(st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "Nebbiolo", " ", "\n", "92", "é", "the", "."]
)).map("".join)


@pytest.mark.parametrize(("name", "params"), VARIANTS)
@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.one_of(st.text(), TAG_SOUP), max_size=4),
       gold=st.text(min_size=1).filter(str.strip), chunk=st.text(), chat_form=st.booleans())
def test_any_text_gives_one_bounded_float_each(name, params, texts, gold, chat_form, chunk):
    n = len(texts)
    completions = [chat(t) for t in texts] if chat_form else texts
    scores = build_reward(name, params)(
        completions, answer=[gold] * n, aliases=[[gold.upper()]] * n,
        context=[[chunk, f"it is {gold}"]] * n, question=["q"] * n, examples=[[chunk, "<think>t</think>"]] * n)
    assert len(scores) == n
    assert all(isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)


@given(pred=st.text(), gold=st.text())
def test_token_f1_bounded_and_symmetric(pred, gold):
    assert 0.0 <= token_f1(pred, gold) <= 1.0
    assert token_f1(pred, gold) == pytest.approx(token_f1(gold, pred))


@given(text=st.one_of(st.text(), TAG_SOUP))
def test_extract_answer_is_none_or_stripped(text):
    answer = extract_answer(text)
    assert answer is None or answer == answer.strip()


# ------------------------------------------------------------------ build_reward
def test_rewards_registry():
    assert set(REWARDS) == {"answer_match", "format", "context_grounding", "length", "repetition",
                            "reasoning_match", "no_example_copy", "semantic_match", "reward_model"}


@pytest.mark.parametrize(("name", "expected"), [
    ("answer_match", ["partial", "rel_tolerance", "tolerance"]), ("format", ["mode"]),
    ("context_grounding", ["exclude_question", "include_reasoning"]),
    ("length", ["falloff", "max_completion_length", "max_words", "min_words", "overlong_buffer", "unit"]),
    ("repetition", ["max_penalty", "ngram_size"]), ("reasoning_match", ["min_words"]), ("no_example_copy", []),
    ("semantic_match", ["batch_size", "device", "embedder"]),
    ("reward_model", ["batch_size", "device", "max_length", "model", "positive_label", "with_question"]),
])
def test_accepted_params(name, expected):
    assert accepted_params(name) == expected


@pytest.mark.parametrize(("name", "params", "message"), [
    ("answr_match", {}, "unknown reward 'answr_match'; did you mean 'answer_match'? "
                        "known: answer_match, context_grounding, format, length, no_example_copy, reasoning_match, "
                        "repetition, reward_model, semantic_match (or a custom 'package.module:function' / "
                        "'path/to/file.py:function')"),
    ("zzz", {}, "unknown reward 'zzz'; known: answer_match, context_grounding, format, length, no_example_copy"),
    ("length", {"max_word": 10},
     "reward 'length': unknown param 'max_word'; did you mean 'max_words'? (accepted: falloff, "
     "max_completion_length, max_words, min_words, overlong_buffer, unit)"),
    ("answer_match", {"partal": True}, "reward 'answer_match': unknown param 'partal'; did you mean 'partial'? "
                                       "(accepted: partial, rel_tolerance, tolerance)"),
    ("answer_match", {"answer": ["x"]},
     "reward 'answer_match': unknown param 'answer' (accepted: partial, rel_tolerance, tolerance)"),
    ("answer_match", {"tolerance": -1}, "reward 'answer_match': tolerance must be a finite number >= 0, got -1"),
    ("answer_match", {"rel_tolerance": float("nan")}, "rel_tolerance must be a finite number >= 0"),
    ("length", {"unit": "tokens"}, "reward 'length': unknown unit 'tokens' (accepted: chars, words)"),
    ("length", {"max_completion_length": 64}, "overlong_buffer must be in [1, max_completion_length (64)], got 0"),
    ("length", {"max_completion_length": 64, "overlong_buffer": 65}, "overlong_buffer must be in [1"),
    ("length", {"max_completion_length": 6.5, "overlong_buffer": 1}, "max_completion_length must be an integer"),
    ("length", {"overlong_buffer": -1}, "overlong_buffer must be an integer >= 0"),
    ("length", {"overlong_buffer": 16}, "overlong_buffer 16 does nothing without max_completion_length"),
    ("repetition", {"ngram_size": 0}, "reward 'repetition': ngram_size must be an integer >= 1, got 0"),
    ("repetition", {"ngram_size": 2.5}, "ngram_size must be an integer >= 1"),
    ("repetition", {"max_penalty": 0}, "reward 'repetition': max_penalty must be in (0, 1], got 0"),
    ("repetition", {"max_penalty": 1.5}, "max_penalty must be in (0, 1]"),
    ("repetition", {"max_penalty": -0.5}, "max_penalty must be in (0, 1]"),
    ("context_grounding", {"context": [["x"]]}, "unknown param 'context'"),
    ("format", {"mode": "stric"}, "reward 'format': unknown mode 'stric' (accepted: soft, strict)"),
    ("reasoning_match", {"min_words": 0}, "reward 'reasoning_match': min_words must be an integer >= 1, got 0"),
    ("format", {"mode": 1}, "param 'mode' must be str"),
    ("answer_match", {"partial": "yes"}, "param 'partial' must be a bool"),
    ("length", {"min_words": 80}, "min_words (80) > max_words (60)"),
    ("length", {"falloff": 0}, "falloff must be > 0"),
    ("length", {"falloff": float("nan")}, "falloff must be > 0, got nan"),
    ("length", {"min_words": float("inf"), "max_words": float("inf")},
     "reward 'length': min_words must be a finite number >= 0, got inf"),
    ("length", {"min_words": float("nan")}, "min_words must be a finite number >= 0, got nan"),
    ("length", {"min_words": -1}, "min_words must be a finite number >= 0, got -1"),
    ("length", {"max_words": float("nan")}, "min_words (1) > max_words (nan)"),
    ("length", {"max_words": "60"}, "param 'max_words' must be a number"),
    ("length", {"max_words": True}, "param 'max_words' must be a number"),
])
def test_build_reward_errors(name, params, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        build_reward(name, params)
    assert "\n" not in str(err.value)


def test_accepted_params_unknown_name():
    with pytest.raises(ValueError, match="did you mean 'length'"):
        accepted_params("lenght")


def test_build_reward_rejects_non_mapping_params():
    with pytest.raises(TypeError, match="params must be a mapping"):
        build_reward("format", ["soft"])


@pytest.mark.parametrize(("call", "match"), [
    (lambda: format_reward([CLEAN], mode="bogus"), "unknown mode 'bogus'"),
    (lambda: length([CLEAN], min_words=9, max_words=3), "min_words"),
    (lambda: length([CLEAN], falloff=-1), "falloff"),
    (lambda: answer_match([CLEAN], rel_tolerance=float("nan"), answer=["x"]), "rel_tolerance must be a finite"),
    (lambda: answer_match([CLEAN], tolerance="0.5", answer=["x"]), "tolerance must be a finite number >= 0, got '0.5'"),
])
def test_bad_params_raise_at_call_time(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_built_reward_has_name_and_binds_params():
    soft = build_reward("format", {"mode": "soft"})
    assert soft.__name__ == "format"
    assert soft(["<answer>b</answer>"]) == [0.5]
    partial = build_reward("answer_match", {"partial": True})
    assert partial.__name__ == "answer_match"
    assert partial(["<answer>Pinot Noir grape</answer>"], answer=["Pinot Noir"]) == [pytest.approx(0.8)]
    assert build_reward("answer_match", None)(["<answer>Pinot</answer>"], answer=["Pinot Noir"]) == [0.0]
    # TRL passes extra columns and metadata; they must be ignored.
    extra = {"prompts": ["p"], "completion_ids": [[1]], "trainer_state": object(), "context_ids": [[1]]}
    assert build_reward("length", {})(["a b"], **extra) == [1.0]
