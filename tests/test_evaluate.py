"""Evaluation metrics on hand-made completions (no model): the headline metrics and the recipe's rewards."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.evaluate import score
from toolkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ["Barolo is a red wine from Piedmont made from Nebbiolo."]


def row(answer="Nebbiolo", aliases=()):
    return {"question": "Which grape is Barolo made from?", "answer": answer, "aliases": list(aliases),
            "source": "region-barolo", "context": CONTEXT, "context_ids": ["region-barolo:0:abc"]}


@pytest.fixture(scope="module")
def recipe(request):
    import os

    os.chdir(ROOT)  # recipe paths are relative to the project root
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
    assert [q["exact_match"] for q in per_question] == [True, True, False, False]
    assert {f"reward/{spec.key}" for spec in recipe.rewards} <= metrics.keys()
    # The clean, correct completion earns the highest weighted total.
    totals = [q["reward_total"] for q in per_question]
    assert totals[0] == max(totals)


def test_repeated_answer_tags_score_below_clean(recipe):
    """The reward hack measured on CPU: `<answer>X</answer>` repeated to the length limit."""
    clean = "<think>The context says Barolo is made from Nebbiolo.</think><answer>Nebbiolo</answer>"
    hacked = "<answer>Nebbiolo</answer>" * 12
    _, per_question = score(recipe, [row(), row()], [clean, hacked])
    assert per_question[1]["reward_total"] < per_question[0]["reward_total"]
    assert per_question[1]["exact_match"] is False


def test_aliases_count_as_exact(recipe):
    metrics, _ = score(recipe, [row("Cabernet Sauvignon", ["Cab Sauv"])], ["<think>x</think><answer>cab sauv</answer>"])
    assert metrics["answer_match"] == 1.0
