"""Tests for toolkit.questions: question/answer pairs generated from CSV rows, and their train/eval split."""

from __future__ import annotations

import logging
import random

import pytest
from conftest import WINEMAG_ROWS

from toolkit.formats import load_file
from toolkit.loaders import Row
from toolkit.questions import QA, load_qa, question_columns, row_questions
from toolkit.recipe import RowQuestion

TEMPLATES = [
    RowQuestion(question="Which grape variety is '{title}'?", answer="variety"),
    RowQuestion(question="Which country is '{title}' from?", answer="country"),
]


def rows_of(csv_path) -> list[Row]:
    return load_file(csv_path, "reviews", template="{description}", id_column="id",
                     row_columns=question_columns(TEMPLATES)).rows


def everything(split: tuple[list[QA], list[QA]]) -> list[QA]:
    return split[0] + split[1]


def test_questions_from_rows(winemag_csv):
    train, held_out = row_questions(rows_of(winemag_csv()), TEMPLATES, eval_fraction=0.2, seed=0)
    by_question = {qa.question: qa for qa in train + held_out}
    assert by_question["Which grape variety is 'Castello Verde 2016 Riserva (Chianti Classico)'?"] == QA(
        "Which grape variety is 'Castello Verde 2016 Riserva (Chianti Classico)'?", "Sangiovese", [], "reviews#10"
    )
    assert by_question["Which country is 'Bodega Luna 2015 Crianza (Rioja)' from?"].answer == "Spain"
    # Titles are used verbatim (the double space too), so the question names the wine as its document does.
    assert "Which country is 'Domaine Caillou 2020  Sancerre' from?" in by_question
    # 10 rows × 2 templates, minus the blank country (row 13) and both rows sharing a title (15 and 16).
    assert len(by_question) == 20 - 1 - 4
    assert "Which country is 'Nowhere Cellars NV Red' from?" not in by_question
    assert "Which grape variety is 'Nowhere Cellars NV Red'?" in by_question
    assert not any("Fox Hollow" in question for question in by_question)


def test_split_is_by_row(winemag_csv):
    train, held_out = row_questions(rows_of(winemag_csv()), TEMPLATES, eval_fraction=0.2, seed=0)
    assert not {qa.source for qa in train} & {qa.source for qa in held_out}
    assert len({qa.source for qa in held_out}) == 2  # 20% of the 8 rows with questions, rounded
    # A row's questions stay together and in template order.
    sources = [qa.source for qa in train]
    assert sources == sorted(sources, key=sources.index)
    for first, second in zip(train, train[1:], strict=False):
        if first.source == second.source:
            assert "grape variety" in first.question and "country" in second.question


def test_deterministic_for_a_seed_and_independent_of_row_order(winemag_csv):
    rows = rows_of(winemag_csv())
    first = row_questions(rows, TEMPLATES, 0.3, seed=7)
    assert row_questions(rows, TEMPLATES, 0.3, seed=7) == first
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert row_questions(shuffled, TEMPLATES, 0.3, seed=7) == first
    held_out = [frozenset(qa.source for qa in row_questions(rows, TEMPLATES, 0.3, seed)[1]) for seed in range(8)]
    assert len(set(held_out)) > 1  # the seed picks the rows


def test_adding_rows_keeps_the_order_of_existing_rows(winemag_csv):
    rows = rows_of(winemag_csv())
    small = everything(row_questions(rows[:5], TEMPLATES, 0.5, seed=0))
    big = everything(row_questions(rows, TEMPLATES, 0.5, seed=0))
    # Rows are ranked by hashes of their ids (eval takes the first ranks), so new rows never reorder old ones.
    small_rows = list(dict.fromkeys(qa.source for qa in small))
    assert [source for source in dict.fromkeys(qa.source for qa in big) if source in small_rows] == small_rows


@pytest.mark.parametrize("fraction, n_eval", [(0.01, 1), (0.99, 7)])
def test_both_sides_get_a_row(winemag_csv, fraction, n_eval):
    train, held_out = row_questions(rows_of(winemag_csv()), TEMPLATES, fraction, seed=0)
    assert len({qa.source for qa in held_out}) == n_eval
    assert len({qa.source for qa in train}) == 8 - n_eval


def test_no_rows_no_questions(winemag_csv):
    blank = [[row[0], *[""] * 13] for row in WINEMAG_ROWS[:3]]
    blank = [[r[0], "Italy", "text", *r[3:]] for r in blank]  # a description but no title or variety
    assert row_questions(rows_of(winemag_csv(rows=blank)), TEMPLATES, 0.2, seed=0) == ([], [])


def test_question_columns():
    assert question_columns(TEMPLATES) == ["title", "variety", "country"]


def test_a_title_differing_only_in_spacing_or_case_is_one_question_of_two_rows():
    # Two reviews of one wine, one title written with a double space (as in the Kaggle file): were they two
    # questions, one could land in training and its copy in eval.
    titles = ["Nicosia 2013 Vulkà Bianco  (Etna)", "Nicosia 2013 Vulkà Bianco (Etna)",
              "NICOSIA 2013 Vulkà Bianco (Etna)", "Rainstorm 2013 Pinot Gris", "St. Julian 2013 Riesling"]
    rows = [Row(f"r#{i}", {"title": title, "variety": "White Blend"}, i + 2) for i, title in enumerate(titles)]
    train, held_out = row_questions(rows, TEMPLATES[:1], 0.5, seed=0)
    assert sorted(qa.source for qa in train + held_out) == ["r#3", "r#4"]


def test_a_title_spelled_with_a_combining_accent_is_one_question_of_two_rows():
    # "à" as one character and as "a" + U+0300 look the same and tokenize the same: as two questions, one row
    # could be trained on and the other held out.
    titles = ["Nicosia 2013 Vulkà Bianco (Etna)", "Nicosia 2013 Vulka\u0300 Bianco (Etna)",
              "Rainstorm 2013 Pinot Gris", "St. Julian 2013 Riesling"]
    rows = [Row(f"r#{i}", {"title": title, "variety": "White Blend"}, i + 2) for i, title in enumerate(titles)]
    train, held_out = row_questions(rows, TEMPLATES[:1], 0.5, seed=0)
    assert sorted(qa.source for qa in train + held_out) == ["r#2", "r#3"]


def test_a_question_file_key_that_is_not_read_is_warned_about(tmp_path, caplog):
    # "sources" for "source" left every question without its document, and retrieval recall silently unscored.
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Q1?", "answer": "a", "sources": "notes#bees", "topic": "x"}\n'
                    '{"question": "Q2?", "answer": "b", "alias": ["B"], "sources": "notes#wax"}\n')
    with caplog.at_level(logging.WARNING, logger="toolkit.questions"):
        rows = load_qa(path)
    assert rows == [QA("Q1?", "a"), QA("Q2?", "b")]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:1: key 'sources' is not read (2 lines; did you mean 'source'?)",
        f"{path}:1: key 'topic' is not read (1 line; the keys read are question, answer, aliases, source)",
        f"{path}:2: key 'alias' is not read (1 line; did you mean 'aliases'?)",
    ]
    caplog.clear()
    path.write_text('{"question": "Q?", "answer": "a", "aliases": null, "source": null}\n')
    with caplog.at_level(logging.WARNING, logger="toolkit.questions"):
        load_qa(path)
    assert not caplog.records


def test_an_extra_column_beside_the_key_it_resembles_is_no_misspelling(tmp_path, caplog):
    # A file exported with "question_id" and "source_url" beside "question" and "source" was told "did you mean
    # 'question'?", as if the column were a typo to rename (into a repeated key); only a line without the key it
    # resembles makes it one.
    path = tmp_path / "train.jsonl"
    path.write_text('{"question_id": 7, "question": "Q1?", "answer": "a", "source": "notes#bees", '
                    '"source_url": "https://example.org/bees"}\n'
                    '{"question_id": 8, "question": "Q2?", "answer": "b", "source_url": "https://example.org/wax"}\n')
    with caplog.at_level(logging.WARNING, logger="toolkit.questions"):
        rows = load_qa(path)
    assert rows == [QA("Q1?", "a", [], "notes#bees"), QA("Q2?", "b")]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:1: key 'question_id' is not read (2 lines; the keys read are question, answer, aliases, source)",
        f"{path}:1: key 'source_url' is not read (2 lines; did you mean 'source'?)",  # line 2 has no 'source'
    ]
