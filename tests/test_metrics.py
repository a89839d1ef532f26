"""Metrics on hand-made completions (no model) and paired bootstrap intervals on cases with a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.data import QA
from toolkit.metrics import REWARD_COLUMNS, bootstrap_indices, column_means, retrieval_hit, score, summarize

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ["Barolo is a red wine from Piedmont made from Nebbiolo."]
CLEAN_COMPLETION = "<think>The context says Nebbiolo.</think><answer>Nebbiolo</answer>"


def row(answer="Nebbiolo", aliases=(), source="region-barolo", retrieved=("region-barolo",)):
    return {"question": "Which grape is Barolo made from?", "answer": answer, "aliases": list(aliases),
            "source": source, "context": CONTEXT, "context_ids": ["region-barolo:0:abc"],
            "context_sources": list(retrieved)}


@pytest.fixture(scope="module")
def recipe():
    from toolkit.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / "wine.yaml")


def test_headline_metrics(recipe):
    completions = [
        "<think>The context says Nebbiolo.</think><answer>Nebbiolo</answer>",  # right, strict format
        "<answer>Nebbiolo</answer>",  # right, no think block
        "<think>Hmm.</think><answer>Merlot</answer>",  # wrong, strict format
        "Nebbiolo, I think",  # no tags at all
    ]
    metrics, per_question = score(recipe, [row()] * 4, completions)
    assert metrics["answer_match"] == 0.5
    assert metrics["format"] == 0.5
    assert [q["answer_match"] for q in per_question] == [True, True, False, False]
    assert [q["token_f1"] for q in per_question] == [1.0, 1.0, 0.0, 0.0]
    assert [q["context_grounding"] for q in per_question] == [1.0, 1.0, 0.0, 0.0]
    assert {f"reward/{spec.key}" for spec in recipe.rewards} <= metrics.keys()
    # The clean, correct completion earns the highest weighted total.
    totals = [q["reward_total"] for q in per_question]
    assert totals[0] == max(totals)


def test_token_f1_gives_partial_credit(recipe):
    _, per_question = score(
        recipe, [row("Cabernet Sauvignon")] * 3,
        ["<think>x</think><answer>Sauvignon</answer>",  # 1 of 2 gold tokens, nothing extra: P=1, R=0.5
         "<think>x</think><answer>cabernet sauvignon</answer>",
         "<answer>Cabernet</answer><answer>Sauvignon</answer>"],  # hedging across answers earns nothing
    )
    assert [q["token_f1"] for q in per_question] == [pytest.approx(0.6667), 1.0, 0.0]
    assert [q["answer_match"] for q in per_question] == [False, True, False]


def test_repeated_answer_tags_score_below_clean(recipe):
    """The reward hack measured on CPU: `<answer>X</answer>` repeated to the length limit."""
    clean = "<think>The context says Barolo is made from Nebbiolo.</think><answer>Nebbiolo</answer>"
    hacked = "<answer>Nebbiolo</answer>" * 12
    _, per_question = score(recipe, [row(), row()], [clean, hacked])
    assert per_question[1]["reward_total"] < per_question[0]["reward_total"]
    assert per_question[1]["answer_match"] is False


def test_aliases_count_as_exact(recipe):
    metrics, _ = score(recipe, [row("Cabernet Sauvignon", ["Cab Sauv"])], ["<think>x</think><answer>cab sauv</answer>"])
    assert metrics["answer_match"] == 1.0


def test_rewards_get_the_columns_training_passes(recipe, tmp_path):
    # A custom reward that reads columns TRL passes in training (`context_sources`, `prompts`) must score the
    # evaluation too, not stop it with a missing argument.
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def cites_gold(completions, context_sources, source, prompts, **kwargs):\n"
                       "    return [float(s in c and bool(p)) for s, c, p in zip(source, context_sources, prompts)]\n")
    from toolkit.recipe import load_recipe

    custom = load_recipe(ROOT / "recipes" / "wine.yaml", [f'rewards=[{{name: "{rewards}:cites_gold"}}]'])
    rows = [{**row(), "prompt": [{"role": "user", "content": "?"}]},
            {**row(retrieved=("grape-merlot",)), "prompt": [{"role": "user", "content": "?"}]}]
    _, per_question = score(custom, rows, [CLEAN_COMPLETION] * 2)
    assert [q["reward/cites_gold"] for q in per_question] == [1.0, 0.0]


def test_reward_columns_are_the_rows_training_uses(recipe):
    # TRL passes every dataset column but `prompt` (as `prompts`): evaluation must pass the same ones.
    from toolkit.index_store import Hit
    from toolkit.prompts import build_rows

    class Index:
        def search(self, questions, top_k):
            return [[Hit("region-barolo:0:ab", CONTEXT[0], "region-barolo", 0.9)] for _ in questions]

    [built] = build_rows([QA(question="Which grape is Barolo made from?", answer="Nebbiolo")], Index(),
                         recipe.prompt, 1)
    assert set(REWARD_COLUMNS) == built.keys() - {"prompt"}


def test_retrieval_hit():
    assert retrieval_hit(row()) is True
    assert retrieval_hit(row(retrieved=("region-rioja", "grape-merlot"))) is False
    assert retrieval_hit(row(source="")) is None  # a question without a gold document: not applicable


def test_column_means_skip_not_applicable():
    means = column_means([{"a": True, "b": None}, {"a": False, "b": 0.5}, {"a": True, "b": None}])
    assert means == {"a": pytest.approx(0.6667), "b": 0.5}
    assert column_means([{"recall": None}]) == {"recall": None}


def scores(values, name="answer_match"):
    return [{name: v} for v in values]


def test_constant_difference_has_zero_width_interval():
    base = scores([0.1, 0.4, 0.2, 0.9, 0.5])
    tuned = scores([0.3, 0.6, 0.4, 1.1, 0.7])  # every question + 0.2
    diff = summarize({"base": base, "tuned": tuned})["differences"]["tuned - base"]["answer_match"]
    assert diff["mean"] == diff["low"] == diff["high"] == pytest.approx(0.2)
    assert diff["significant"] and diff["questions"] == 5


def test_fewer_than_five_questions_are_never_significant():
    # Two questions both won used to be "+1.000 * [+1.000, +1.000]": a coin toss called significant.
    for n in (1, 2, 4):
        diff = summarize({"base": scores([0.0] * n), "tuned": scores([1.0] * n)})["differences"]["tuned - base"]
        assert diff["answer_match"]["low"] == 1.0 and not diff["answer_match"]["significant"], n
    five = summarize({"base": scores([0.0] * 5), "tuned": scores([1.0] * 5)})["differences"]["tuned - base"]
    assert five["answer_match"]["significant"]
    from toolkit.report import verdicts

    two = summarize({"base": scores([0.0] * 2), "tuned": scores([1.0] * 2)})
    assert verdicts(two)[0].endswith("[+1.000, +1.000] over 2 questions: not significant (too few questions: see "
                                     "toolkit.metrics.MIN_QUESTIONS)")


def test_clear_improvement_is_significant():
    rng = np.random.default_rng(1)
    base = rng.random(60) < 0.2
    tuned = base | (rng.random(60) < 0.7)  # right wherever base was, and on most others
    summary = summarize({"base": scores(base.tolist()), "tuned": scores(tuned.tolist())})
    diff = summary["differences"]["tuned - base"]["answer_match"]
    assert 0 < diff["low"] <= diff["mean"] <= diff["high"] and diff["significant"]
    interval = summary["intervals"]["tuned"]["answer_match"]
    assert interval["low"] <= summary["means"]["tuned"]["answer_match"] <= interval["high"]
    assert summary["bootstrap"] == {"resamples": 2000, "seed": 0, "confidence": 0.95, "questions": 60}


def test_identical_columns_are_not_significant():
    values = scores([True, False, True, True, False, False, True, False])
    summary = summarize({"no_context": values, "base": values, "tuned": values})
    for key in ("tuned - base", "base - no_context"):
        diff = summary["differences"][key]["answer_match"]
        assert (diff["mean"], diff["low"], diff["high"], diff["significant"]) == (0.0, 0.0, 0.0, False)


def test_noisy_difference_spans_zero():
    base = scores([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    tuned = scores([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])  # as many wins as losses
    diff = summarize({"base": base, "tuned": tuned})["differences"]["tuned - base"]["answer_match"]
    assert diff["low"] < 0 < diff["high"] and not diff["significant"]


def test_interval_is_reproducible_and_covers_mean():
    column = scores([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    first, second = summarize({"base": column}), summarize({"base": column})
    assert first == second  # fixed seed
    interval = first["intervals"]["base"]["answer_match"]
    assert interval["low"] < first["means"]["base"]["answer_match"] < interval["high"]
    assert bootstrap_indices(8, 5, 0).shape == (5, 8)


def test_not_applicable_metric_has_no_interval_or_difference():
    summary = summarize({
        "no_context": [{"retrieval_recall": None, "format": 0.0}] * 5,
        "base": [{"retrieval_recall": True, "format": 1.0}] * 5,
    })
    assert summary["means"]["no_context"]["retrieval_recall"] is None
    assert "retrieval_recall" not in summary["intervals"]["no_context"]
    assert summary["intervals"]["base"]["retrieval_recall"] == {"low": 1.0, "high": 1.0, "questions": 5}
    assert "retrieval_recall" not in summary["differences"]["base - no_context"]
    assert summary["differences"]["base - no_context"]["format"]["significant"]


def test_columns_must_answer_the_same_questions():
    with pytest.raises(ValueError, match="different numbers"):
        summarize({"base": scores([1, 0]), "tuned": scores([1])})
