"""The rule-based rewards beyond the basics in test_rewards.py: numeric tolerance and number words, length units
and the overlong penalty, repetition, an adversarial table across every reward, and fuzzing properties."""

import math
import string
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.rewards import (
    answer_match,
    build_reward,
    context_grounding,
    extract_answer,
    format_reward,
    is_exact_match,
    length,
    no_example_copy,
    repetition,
)
from toolkit.rewards.text import normalize, number_marks, words_number

CONTEXT = ["Barolo is made from Nebbiolo grapes.", "Barbaresco lies north-east of Alba."]
GOLD = "Nebbiolo"


# --------------------------------------------------------------------------------------------- normalization
def reference_normalize(text):
    """The plain per-character definition that normalize()'s translate tables must reproduce exactly."""
    text = number_marks(unicodedata.normalize("NFKD", text)).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch
                   for ch in text if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return " ".join(tok for tok in text.split() if tok not in {"a", "an", "the"})


@settings(max_examples=500)
@given(text=st.one_of(st.text(), st.text(st.characters(codec="utf-8")),
                      st.text("aé\u0301.-—«»'’ Ａ🍷\ud800`~$＄€1０,−")))
def test_normalize_fast_paths_match_the_definition(text):
    assert normalize(text) == reference_normalize(text)


# ------------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(("text", "expected"), [
    ("<think>It is <answer>Nebbiolo</answer></think>", None),  # hidden in the reasoning: not an answer
    ("<think><answer>a</answer></think><answer>b</answer>", "b"),
    ("<think>unclosed <answer>a</answer>", "a"),  # no </think>: an answer block anywhere counts
    ("<think>a</think>x<answer>y</answer>", "y"),
])
def test_extract_answer_ignores_the_think_block(text, expected):
    assert extract_answer(text) == expected


# ------------------------------------------------------------------------------------- numbers and tolerance
@pytest.mark.parametrize(("tokens", "expected"), [
    ("ninety two", 92), ("ninety two points", 92), ("about ninety", 90), ("one hundred and five", 105),
    ("two thousand", 2000), ("hundred", 100), ("three million two hundred thousand", 3_200_000),
    ("twelve", 12), ("zero", 0), ("nebbiolo", None), ("", None), ("and", None),
    # Years read in pairs; words that cannot continue a number end it.
    ("nineteen ninety two", 1992), ("twenty twenty one", 2021), ("two thousand nineteen", 2019),
    ("one two three", 1), ("ten five", 10), ("twenty two", 22), ("one hundred two", 102),
    ("five and ten", 5), ("minus five", -5), ("negative review five", 5), ("twenty " * 160, None),
])
def test_words_number(tokens, expected):
    assert words_number(tokens.split()) == expected


@pytest.mark.parametrize(("text", "gold", "params", "expected"), [
    ("<answer>92.4</answer>", "92", {}, 0.0),
    ("<answer>92.4</answer>", "92", {"tolerance": 0.5}, 1.0),
    ("<answer>92.4</answer>", "92", {"rel_tolerance": 0.01}, 1.0),
    ("<answer>about 95 points</answer>", "92", {"tolerance": 5}, 1.0),
    ("<answer>about 95 points</answer>", "92", {"tolerance": 2}, 0.0),
    ("<answer>-3</answer>", "3", {}, 0.0),
    ("<answer>1,200</answer>", "1200", {}, 1.0),
    ("<answer>ninety-two points</answer>", "92", {}, 1.0),
    ("<answer>Ninety Two</answer>", "92", {}, 1.0),
    ("<answer>one hundred and five</answer>", "105", {}, 1.0),
    ("<answer>two thousand</answer>", "2,000", {}, 1.0),
    ("<answer>92</answer>", "ninety-two", {}, 1.0),
    ("<answer>twenty</answer>", "92", {}, 0.0),
    ("<answer>1992</answer>", "92", {"tolerance": 0.5}, 0.0),
    ("<answer>Barolo</answer>", "Nebbiolo", {"tolerance": 1e9}, 0.0),  # tolerance is for numbers only
    ("<answer>90</answer><answer>94</answer>", "92", {"tolerance": 5}, 0.0),  # hedging still forfeits
    ("<answer>$25.10</answer>", "$25", {"tolerance": 0.25}, 1.0),
    ("<answer>" + "9" * 400 + "</answer>", "9" * 400, {"rel_tolerance": 0.5}, 1.0),  # equal text, no number
    # A numeric gold is matched by value, never by token overlap: no partial credit for a wrong number.
    ("<answer>-3</answer>", "3", {"partial": True}, 0.0),
    ("<answer>1,500</answer>", "1,000", {"partial": True}, 0.0),
    ("<answer>the 1,350 metres</answer>", "1,350 metres", {"partial": True}, 1.0),
    # A text gold keeps its F1, but only for an answer that holds its numbers: a wrong number, or the unit
    # alone, is no near miss; the right number with other words is.
    ("<answer>1,200 metres</answer>", "1,350 metres", {"partial": True}, 0.0),
    ("<answer>metres</answer>", "1,350 metres", {"partial": True}, 0.0),
    ("<answer>1350 m</answer>", "1,350 metres", {"partial": True}, 0.5),
    ("<answer>11 degrees Celsius</answer>", "minus 11 degrees Celsius", {"partial": True}, 0.0),
    ("<answer>-11 degrees Celsius</answer>", "minus 11 degrees Celsius", {"partial": True}, pytest.approx(4 / 7)),
    ("<answer>14 January 2020 at minus 11 degrees Celsius</answer>", "minus 11 degrees Celsius", {"partial": True},
     pytest.approx(2 / 3)),
    ("<answer>15 January 2020</answer>", "14 January 2020", {"partial": True}, 0.0),
    ("<answer>thirty-eight months in oak</answer>", "38 months", {"partial": True}, pytest.approx(2 / 7)),
    ("<answer>Canadian dollars</answer>", "70 Canadian dollars", {"partial": True}, 0.0),
    ("<answer>71 Canadian dollars</answer>", "70 Canadian dollars", {"partial": True}, 0.0),
    ("<answer>71 Canadian dollars</answer>", "70 Canadian dollars", {"partial": True, "tolerance": 1},
     pytest.approx(2 / 3)),  # within the tolerance, the number is no wrong one
    # The sign before a currency symbol, the typeset minus and full-width digits are read as a number's.
    ("<answer>5</answer>", "-$5", {}, 0.0),
    ("<answer>$5</answer>", "-$5", {}, 0.0),
    ("<answer>-5 dollars</answer>", "-$5", {}, 1.0),
    ("<answer>-$25</answer>", "25", {}, 0.0),
    ("<answer>−5</answer>", "-5", {}, 1.0),
    ("<answer>-5</answer>", "−5", {}, 1.0),
    ("<answer>１９９２</answer>", "1992", {}, 1.0),
    ("<answer>40 °C</answer>", "-40 °C", {}, 0.0),  # a text gold keeps its sign too
    ("<answer>-40 °C</answer>", "-40 °C", {}, 1.0),
    # A scale word after digits scales them, in the answer and in the gold.
    ("<answer>3 million</answer>", "3,000,000", {}, 1.0),
    ("<answer>1.5 million bottles</answer>", "1,500,000", {}, 1.0),
    ("<answer>3,000,000</answer>", "3 million", {}, 1.0),
    ("<answer>3 thousandth</answer>", "3000", {}, 0.0),
    ("<answer>nineteen ninety-two</answer>", "1992", {}, 1.0),
    ("<answer>one two three</answer>", "6", {}, 0.0),
    ("<answer>.5</answer>", "0.5", {}, 1.0), ("<answer>0.5</answer>", ".5", {}, 1.0),
    ("<answer>.5</answer>", "5", {}, 0.0), ("<answer>-.5 %</answer>", "-0.5%", {}, 1.0),
    # Only full-width digits and minus signs become ASCII: a footnote mark or a fraction adds no digits.
    ("<answer>1992¹</answer>", "1992", {}, 1.0), ("<answer>10³</answer>", "103", {}, 0.0),
    ("<answer>2½</answer>", "21", {}, 0.0),
    # A minus glued to a word is a hyphen; "minus" and "negative" are signs.
    ("<answer>mid-2019</answer>", "2019", {}, 1.0), ("<answer>COVID-19</answer>", "19", {}, 1.0),
    ("<answer>x-5</answer>", "-5", {}, 0.0), ("<answer>minus 5</answer>", "5", {}, 0.0),
    ("<answer>minus five</answer>", "5", {}, 0.0), ("<answer>negative 3</answer>", "3", {}, 0.0),
    ("<answer>minus five</answer>", "-5", {}, 1.0), ("<answer>minus 5 °C</answer>", "minus five", {}, 1.0),
    # Digit groups are exactly three: "1,0000" is not 1000.
    ("<answer>1,0000</answer>", "1000", {}, 0.0), ("<answer>1,2345</answer>", "1234", {}, 0.0),
    # A gold's closing period or plus sign keeps it numeric.
    ("<answer>in 1992</answer>", "1992.", {}, 1.0), ("<answer>5 points</answer>", "+5", {}, 1.0),
    # A sign word before a currency symbol; a decimal point glued to a word; "and" between two numbers; a sign
    # word in another clause; a list bullet; a doubled hyphen; the small and the superscript minus.
    ("<answer>minus $3</answer>", "3", {}, 0.0), ("<answer>minus $3</answer>", "-3", {}, 1.0),
    ("<answer>Chanel No.5</answer>", "5", {}, 1.0), ("<answer>between five and ten</answer>", "15", {}, 0.0),
    ("<answer>two thousand and nineteen</answer>", "2019", {}, 1.0),
    ("<answer>The test was negative. Five cases.</answer>", "5", {}, 1.0),
    ("<answer>- $5</answer>", "$5", {}, 1.0), ("<answer>--7</answer>", "7", {}, 1.0),
    ("<answer>﹣3</answer>", "3", {}, 0.0), ("<answer>⁻3</answer>", "-3", {}, 1.0),
    # Several numbers in words are not one numeric gold: "four-four-two" is text, not 4.
    ("<answer>4</answer>", "four-four-two", {}, 0.0), ("<answer>four-four-two</answer>", "four-four-two", {}, 1.0),
    ("<answer>14</answer>", "Seven and Seven", {}, 0.0), ("<answer>one</answer>", "One, Two, Three", {}, 0.0),
    # Digits with a scale word answer in both readings: "how many million bottles?" 300.
    ("<answer>300 million</answer>", "300", {}, 1.0), ("<answer>€3 billion</answer>", "3", {}, 1.0),
    ("<answer>minus 3 million</answer>", "3", {}, 0.0),
    # The en dash of typeset text is a minus before a number (not in a range); digit groups split by a space.
    ("<answer>-11°C</answer>", "–11°C", {}, 1.0), ("<answer>–11°C</answer>", "-11°C", {}, 1.0),
    ("<answer>-11</answer>", "–11", {}, 1.0), ("<answer>11</answer>", "–11", {}, 0.0),
    ("<answer>1990–1995</answer>", "1990", {}, 1.0),
    ("<answer>4,800 bottles</answer>", "4 800 bottles", {}, 1.0), ("<answer>1,000</answer>", "1 000", {}, 1.0),
    ("<answer>in 1998 200 bottles</answer>", "1998200", {}, 0.0),
    # ... in the answer's number too, whatever space typeset text puts between the groups.
    ("<answer>1 000</answer>", "1000", {}, 1.0), ("<answer>4\u00a0800 bottles</answer>", "4,800", {}, 1.0),
    ("<answer>about 10\u202f000</answer>", "10000", {}, 1.0), ("<answer>1\u2009000</answer>", "1 000", {}, 1.0),
    ("<answer>1 000</answer>", "1", {}, 0.0), ("<answer>in 1998 200 bottles</answer>", "1998", {}, 1.0),
])
def test_answer_match_numbers(text, gold, params, expected):
    assert answer_match([text], answer=[gold], **params) == [expected]


def test_is_exact_match_tolerance_is_opt_in():
    assert not is_exact_match("<answer>92.4</answer>", "92")
    assert is_exact_match("<answer>92.4</answer>", "92", tolerance=0.5)
    assert is_exact_match("<answer>101</answer>", "100", None, rel_tolerance=0.02)


# ------------------------------------------------------------------------------------------------------ length
@pytest.mark.parametrize(("text", "params", "expected"), [
    ("abcde", {"unit": "chars", "min_words": 1, "max_words": 3, "falloff": 4}, 0.5),
    ("ab", {"unit": "chars", "min_words": 1, "max_words": 3, "falloff": 4}, 1.0),
    ("é" * 10, {"unit": "chars", "min_words": 10, "max_words": 10}, 1.0),
    ("one two", {"unit": "chars", "min_words": 1, "max_words": 3, "falloff": 10}, 0.6),
    ("one two", {"unit": "words", "min_words": 1, "max_words": 3, "falloff": 10}, 1.0),
])
def test_length_units(text, params, expected):
    assert length([text], **params) == [pytest.approx(expected)]


OVERLONG = {"max_completion_length": 64, "overlong_buffer": 16}


@pytest.mark.parametrize(("n_tokens", "expected"), [(0, 1.0), (40, 1.0), (48, 1.0), (52, 0.75), (56, 0.5),
                                                    (63, 1 / 16), (64, 0.0), (100, 0.0)])
def test_length_overlong_penalty(n_tokens, expected):
    assert length(["a b c"], completion_ids=[[7] * n_tokens], **OVERLONG) == [pytest.approx(expected)]


def test_length_overlong_multiplies_the_band_and_needs_token_ids():
    text = " ".join(["w"] * 90)  # 30 words past max_words=60: band 0.5
    assert length([text], completion_ids=[[1] * 56], **OVERLONG) == [pytest.approx(0.25)]
    assert length([text], **OVERLONG) == [pytest.approx(0.5)]  # no token ids (evaluation): band only
    assert length([text, text], completion_ids=[[1] * 64], **OVERLONG) == [0.0, pytest.approx(0.5)]
    assert length([text], completion_ids=[[1] * 64]) == [pytest.approx(0.5)]  # penalty off by default


# -------------------------------------------------------------------------------------------------- repetition
@pytest.mark.parametrize(("text", "params", "expected"), [
    ("", {}, 1.0),
    ("a b", {}, 1.0),
    ("a b c", {}, 1.0),
    ("a b c d e f", {}, 1.0),
    ("a b c a b c", {}, 0.75),  # trigrams abc bca cab abc: 3 distinct of 4
    ("A b C a B c", {}, 0.75),  # case-insensitive
    ("a b c a b c", {"max_penalty": 0.5}, 0.875),
    ("a a a a", {"ngram_size": 1}, 0.25),
    ("a a a a", {"ngram_size": 2}, 1 - 2 / 3),
    ("<answer>x</answer> " * 20, {"ngram_size": 1}, 0.05),
    ("the wine is red and " * 40, {}, 1 - (1 - 5 / 198)),
])
def test_repetition(text, params, expected):
    assert repetition([text], **params) == [pytest.approx(expected)]


def open_r1_repetition(text, ngram_size, max_penalty):
    """open-r1's get_repetition_penalty_reward (max_penalty <= 0), for one completion: the reference."""
    if text == "":
        return 0.0
    words = text.lower().split()
    if len(words) < ngram_size:
        return 0.0
    ngrams, total = set(), 0
    for ng in zip(*[words[i:] for i in range(ngram_size)], strict=False):
        ngrams.add(ng)
        total += 1
    return (1 - len(ngrams) / total) * max_penalty


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from(["a", "B", "b", "c", "wine", "é"]), max_size=40), n=st.integers(1, 4),
       penalty=st.floats(0.01, 1.0))
def test_repetition_is_open_r1_shifted_into_unit_range(words, n, penalty):
    text = " ".join(words)
    assert repetition([text], ngram_size=n, max_penalty=penalty)[0] == pytest.approx(
        1 + open_r1_repetition(text, n, -penalty))


# ----------------------------------------------------------------------------------------- adversarial table
LONG = "<think>" + "word " * 5000 + "</think><answer>Nebbiolo</answer>"
# reward variant -> expected score per case; the columns are the cases below, in order.
CASES = {
    "clean": "<think>The doc says Nebbiolo.</think><answer>Nebbiolo</answer>",
    "hidden_in_think": "<think>It is <answer>Nebbiolo</answer></think>",
    "think_then_other": "<think><answer>Nebbiolo</answer></think><answer>Barbera</answer>",
    "nested_tags": "<answer><answer>Nebbiolo</answer></answer>",
    "empty": "",
    "whitespace": "  \n\t ",
    "empty_tags": "<think></think><answer></answer>",
    "unicode": "<think>Le cépage est le nebbiólo.</think><answer>NEBBIÓLO</answer>",
    "emoji": "<think>🍷🍷</think><answer>🍇</answer>",
    "long": LONG,
    "hedge": "<think>Either.</think><answer>Nebbiolo or Barbera</answer>",
}
EXPECTED = {
    ("answer_match", ()): [1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0],
    ("answer_match", (("partial", True),)): [1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0.5],
    ("format", (("mode", "strict"),)): [1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    ("format", (("mode", "soft"),)): [1, 0.92, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    ("context_grounding", ()): [1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0],
    ("length", ()): [1, 1, 1, 1, 1 - 1 / 60, 1 - 1 / 60, 1, 1, 1, 0, 1],
    ("repetition", ()): [1, 1, 1, 1, 1, 1, 1, 1, 1, 3 / 4999, 1],
}


@pytest.mark.parametrize(("variant", "expected"), EXPECTED.items(), ids=[f"{n}{dict(p)}" for n, p in EXPECTED])
def test_adversarial_cases(variant, expected):
    name, params = variant
    texts = list(CASES.values())
    n = len(texts)
    scores = build_reward(name, dict(params))(texts, answer=[GOLD] * n, aliases=[[]] * n, context=[CONTEXT] * n)
    assert dict(zip(CASES, scores, strict=True)) == {k: pytest.approx(v) for k, v in zip(CASES, expected,
                                                                                         strict=True)}


@pytest.mark.parametrize("words", ["twenty", "nineteen", "hundred", "thousand"])
def test_a_loop_of_number_words_scores_without_raising(words):
    # 160 repeated number words read as one number overflowed float() (the answer side and the gold side).
    loop = f"{words} " * 160
    assert answer_match([f"<answer>{loop}</answer>"], answer=["5"]) == [0.0]
    assert answer_match(["<answer>5</answer>"], answer=[loop]) == [0.0]


def test_the_sign_before_a_currency_or_a_bare_decimal_is_kept_by_normalize():
    assert normalize("-$5") == normalize("−$5") == "\u22125" and normalize("-.5") == "\u22120 5"
    assert normalize(".5") == normalize("0.5") == "0 5"
    assert normalize("1990−1995") == normalize("1990-1995") == "1990 1995" and normalize("--7") == "7"
    assert context_grounding(["<answer>-$5</answer>", "<answer>−$5</answer>"], context=[["a fee of $5"]] * 2) == [
        0.0, 0.0]


@pytest.mark.parametrize("mark", ["\u200b", "\u00ad", "\ufeff", "\u2060"])
def test_invisible_format_characters_are_no_part_of_a_word(mark):
    # Scraped text holds zero-width spaces and soft hyphens: a word with one inside is the same word, for the
    # answer (an honest copy of the context's spelling) and for the worked-example copy check (a copy laced with
    # them scored 0.88 instead of 0.38, strict format 1.0).
    answer = f"<think>Barolo is made from Nebbiolo.</think><answer>Neb{mark}biolo{mark}</answer>"
    assert answer_match([answer], answer=[GOLD]) == [1.0]
    assert context_grounding([answer], context=[[f"Barolo is made from Neb{mark}biolo grapes."]],
                             answer=[GOLD]) == [1.0]
    example = "<think>Rioja is a wine region in northern Spain that follows the Ebro River.</think>" \
              "<answer>Ebro River</answer>"
    laced = example.replace("io", f"i{mark}o").replace("br", f"b{mark}r")
    assert no_example_copy([laced], examples=[[example]], context=[CONTEXT]) == \
        no_example_copy([example], examples=[[example]], context=[CONTEXT]) == [0.0]


@pytest.mark.parametrize("mark", ["\u200b", "\u00ad", "\ufeff", "\u2060"])
def test_invisible_format_characters_are_no_part_of_a_number(mark):
    # A scraped gold "1992" with a zero-width space after it was no number, only text: "It was 1992." did not match
    # it, though it matched the same gold without the mark; an answer "1<soft hyphen>000" was 1.
    assert answer_match(["<answer>It was 1992.</answer>"], answer=[f"1992{mark}"]) == [1.0]
    assert answer_match([f"<answer>about 1{mark}000 metres</answer>"], answer=["1000"]) == [1.0]


def test_a_number_grounds_with_or_without_its_separators():
    context = [["The estate covers 1,000 hectares."]] * 2
    assert context_grounding(["<answer>1000</answer>", "<answer>1,000</answer>"], context=context,
                             answer=["1,000"] * 2) == [1.0, 1.0]


def test_context_grounding_several_answer_tags_score_zero():
    several = "<think>x</think><answer>Nebbiolo</answer><answer>Nebbiolo</answer>"
    assert context_grounding([several], context=[CONTEXT], answer=[GOLD]) == [0.0]


def test_context_grounding_phrase_does_not_span_two_chunks():
    # The gold is in the context, and "alba barolo" only across the boundary of the two chunks: not read there.
    assert context_grounding(["<answer>Alba Barolo</answer>"], context=[["Near Alba", "Barolo is Nebbiolo"]],
                             answer=[GOLD]) == [0.0]
    assert context_grounding(["<answer>Alba Barolo</answer>"], context=[["Near Alba Barolo is Nebbiolo"]],
                             answer=[GOLD]) == [1.0]


def test_context_grounding_tolerates_junk_in_the_context_column():
    scores = context_grounding(["<answer>Nebbiolo</answer>"] * 3, context=[[None, "Nebbiolo"], [["x"]], 5],
                               answer=[GOLD] * 3)
    assert scores == [1.0, None, None]


# ---------------------------------------------------------------------------------------------- properties
RULE_BASED = [
    ("answer_match", {}), ("answer_match", {"partial": True, "tolerance": 0.5, "rel_tolerance": 0.1}),
    ("format", {"mode": "strict"}), ("format", {"mode": "soft"}), ("context_grounding", {}),
    ("context_grounding", {"include_reasoning": True}), ("length", {}),
    ("length", {"unit": "chars", "min_words": 5, "max_words": 50, "falloff": 7, **OVERLONG}),
    ("repetition", {}), ("repetition", {"ngram_size": 1, "max_penalty": 0.3}),
]
TAG_SOUP = st.lists(st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "Nebbiolo", " ", "\n", "92", "ninety", "two", "é", "the", ".",
     "1,000", "-", "Ｎｅｂｂｉｏｌｏ", "\u0301", "\x00"])).map("".join)
TEXT = st.one_of(st.text(), TAG_SOUP)


@pytest.mark.parametrize(("name", "params"), RULE_BASED)
@settings(max_examples=120, deadline=None)
@given(texts=st.lists(TEXT, max_size=5), gold=st.one_of(TEXT, st.none()), chunk=TEXT,
       n_tokens=st.lists(st.integers(0, 80), max_size=5))
def test_rule_based_rewards_are_total_bounded_and_deterministic(name, params, texts, gold, chunk, n_tokens):
    n = len(texts)
    columns = {"answer": [gold] * n, "aliases": [[chunk]] * n, "context": [[chunk, f"it is {gold}"]] * n,
               "completion_ids": [[0] * k for k in n_tokens], "question": ["q"] * n}
    reward = build_reward(name, params)
    scores = reward(texts, **columns)
    assert len(scores) == n
    assert all(s is None or (isinstance(s, float) and 0.0 <= s <= 1.0) for s in scores)
    assert reward(texts, **columns) == scores  # deterministic, caches included
    # Scoring one completion alone gives the same as scoring it in a batch: no state leaks between samples.
    for i, text in enumerate(texts):
        one = {key: value[i:i + 1] for key, value in columns.items()}
        assert reward([text], **one) == scores[i:i + 1]


# Random text almost never is a strict reply or an exact match, so the implications below are checked on replies
# built to be one; the random tests keep the other direction.
BLOCK = st.text(st.characters(blacklist_characters="<"), min_size=1).filter(str.strip)  # no tag can form
SPACE = st.text(" \n\t", max_size=2)
STRICT_REPLY = st.builds("{}<think>{}</think>{}<answer>{}</answer>{}".format, SPACE, BLOCK, SPACE, BLOCK, SPACE)
GOLD_WORDS = st.text(st.characters(categories=["Ll", "Lu", "Nd"], max_codepoint=0x7F), min_size=1).filter(
    lambda g: normalize(g))
# Spellings is_exact_match counts as the same answer: case, an article, punctuation, spaces.
SAME_ANSWER = st.sampled_from([str.upper, str.lower, "the {}".format, "{}.".format, "  {} ".format, "«{}»".format])


@given(text=STRICT_REPLY)
def test_format_strict_implies_soft_full_marks(text):
    assert format_reward([text], mode="strict") == [1.0]
    assert format_reward([text], mode="soft") == [1.0]


@given(text=TEXT)
def test_format_soft_below_full_marks_implies_not_strict(text):
    if format_reward([text], mode="soft") != [1.0]:
        assert format_reward([text], mode="strict") == [0.0]


@given(gold=GOLD_WORDS, spell=SAME_ANSWER, think=BLOCK)
def test_exact_match_implies_full_answer_match_and_partial(gold, spell, think):
    text = f"<think>{think}</think><answer>{spell(gold)}</answer>"
    assert is_exact_match(text, gold)
    assert answer_match([text], answer=[gold]) + answer_match([text], answer=[gold], partial=True) == [1.0, 1.0]


@given(text=TEXT, gold=TEXT)
def test_no_exact_match_scores_zero_without_partial_credit(text, gold):
    scores = answer_match([text], answer=[gold]) + answer_match([text], answer=[gold], partial=True)
    if is_exact_match(text, gold):
        assert scores == [1.0, 1.0]
    elif gold.strip():
        assert scores[0] == 0.0 and not math.isnan(scores[1])
