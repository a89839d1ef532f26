"""Tests for toolkit.data: corpus and question loaders, and their one-line errors naming file and line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import WINEMAG_ROWS

from toolkit.data import QA, DataError, Document, load_dataset, load_documents, load_qa
from toolkit.recipe import DataSection, load_recipe

ROOT = Path(__file__).resolve().parents[1]
WINE = ROOT / "data" / "wine"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------------------------- documents


def test_load_documents_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "barolo", "text": "Barolo is made from Nebbiolo.", "title": "Barolo"},
            "   ",  # blank lines are skipped
            {"id": "rioja", "text": "Rioja is mostly Tempranillo.", "extra": "ignored"},
        ],
    )
    assert load_documents([path]) == [
        Document("barolo", "Barolo is made from Nebbiolo.", "Barolo"),
        Document("rioja", "Rioja is mostly Tempranillo.", ""),
    ]


def test_load_documents_md_txt_and_jsonl(tmp_path):
    (tmp_path / "sherry.md").write_text("# Sherry\n\nFino is aged under flor.\n", encoding="utf-8")
    (tmp_path / "tokaji.txt").write_text("Tokaji Aszú comes from Hungary.", encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [{"id": "port", "text": "Port is fortified."}])
    docs = load_documents([tmp_path / "sherry.md", jsonl, tmp_path / "tokaji.txt"])
    assert docs == [
        Document("sherry#sherry", "# Sherry\n\nFino is aged under flor.", "Sherry"),  # a section per heading
        Document("port", "Port is fortified.", ""),
        Document("tokaji", "Tokaji Aszú comes from Hungary.", "tokaji"),  # a .txt file is one document
    ]


def test_jsonl_id_is_optional_and_metadata_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "notes.jsonl", [
        {"text": "Barolo is made from Nebbiolo.", "metadata": {"country": "Italy", "points": 94, "price": None}},
        {"id": 7, "text": "Rioja is mostly Tempranillo."},
    ])
    assert load_documents([path]) == [
        Document("notes#1", "Barolo is made from Nebbiolo.", "", {"country": "Italy", "points": 94}),
        Document("7", "Rioja is mostly Tempranillo."),
    ]


def test_duplicate_id_names_both_places(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"},
                                                 {"id": "a", "text": "three"}])
    with pytest.raises(DataError) as err:
        load_documents([path])
    assert str(err.value) == f"{path}:3: duplicate document id 'a' (first in {path}:1)"


def test_duplicate_id_across_files(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "notes", "text": "one"}])
    (tmp_path / "notes.md").write_text("two")
    with pytest.raises(DataError, match=r"notes\.md: duplicate document id 'notes' \(first in .*docs\.jsonl:1\)"):
        load_documents([path, tmp_path / "notes.md"])


@pytest.mark.parametrize(
    "row, key, got",
    [
        ({"id": "a"}, "text", "none (the key is missing)"),
        ({"id": "a", "text": "  "}, "text", "a blank string"),
        ({"id": "a", "text": 3}, "text", 'the number 3 (quote it: "3")'),
        ({"id": "", "text": "empty id"}, "id", "a blank string"),
        ({"id": "a", "text": "x", "title": 7}, "title", 'the number 7 (quote it: "7")'),
        ({"id": "a", "text": ["x"]}, "text", "a list"),
        ({"id": "a", "text": None}, "text", "null"),
    ],
)
def test_bad_document_field_names_file_line_and_key(tmp_path, row, key, got):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "ok", "text": "fine"}, row])
    with pytest.raises(DataError) as err:
        load_documents([path])
    assert str(err.value) == f"{path}:2: '{key}' must be a non-empty string, got {got}"


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "one"}, "", '{"id": "b", "text": '])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid JSON: "):
        load_documents([path])


def test_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", ['["a", "b"]'])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: expected a JSON object, got list$"):
        load_documents([path])


@pytest.mark.parametrize("name", ["docs.json", "README"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("id,text\na,b\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: unsupported corpus file type '{path.suffix}'"):
        load_documents([path])


def test_no_documents(tmp_path):
    write_jsonl(tmp_path / "empty.jsonl", ["", "  "])  # a folder's blank file is skipped, not an error
    with pytest.raises(DataError, match="no documents in"):
        load_documents([tmp_path])


# ------------------------------------------------------------------------------------------- questions


def test_load_qa(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "Which grape makes Barolo?", "answer": "Nebbiolo", "aliases": ["Spanna"], "source": "barolo"},
            {"question": "Where is Rioja?", "answer": "Spain"},
        ],
    )
    assert load_qa(path) == [
        QA("Which grape makes Barolo?", "Nebbiolo", ["Spanna"], "barolo"),
        QA("Where is Rioja?", "Spain", [], ""),
    ]


@pytest.mark.parametrize(
    "row, key, got",
    [
        ({"answer": "Nebbiolo"}, "question", "none (the key is missing)"),
        ({"question": "Which grape?"}, "answer", "none (the key is missing)"),
        ({"question": "Which grape?", "answer": " "}, "answer", "a blank string"),
        # pandas' to_json writes a year as a number: the message says so, not that it is empty.
        ({"question": "Which grape?", "answer": 1997}, "answer", 'the number 1997 (quote it: "1997")'),
        ({"question": "Which grape?", "answer": True}, "answer", "true"),
        ({"question": "Which grape?", "answer": "x", "source": 3}, "source", 'the number 3 (quote it: "3")'),
        ({"question": "Which grape?", "answer": "x", "source": {"id": "a"}}, "source", "an object"),
    ],
)
def test_qa_requires_question_and_answer(tmp_path, row, key, got):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, row])
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert str(err.value) == f"{path}:2: '{key}' must be a non-empty string, got {got}"


@pytest.mark.parametrize("aliases", ["Spanna", ["Spanna", 3], {"a": "b"}, ""])
def test_qa_aliases_must_be_a_list_of_strings(tmp_path, aliases):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a", "aliases": aliases}])
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert str(err.value) == f"{path}:1: 'aliases' must be a list of strings"


def test_qa_null_aliases_and_source_are_none_given(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a", "aliases": None, "source": None}])
    [qa] = load_qa(path)
    assert (qa.aliases, qa.source) == ([], "")


def test_qa_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no questions$"):
        load_qa(path)


# ------------------------------------------------------------------------------------- the shipped files


def test_shipped_wine_data_loads():
    docs = load_documents([WINE / "docs.jsonl"])
    train, evals = load_qa(WINE / "train.jsonl"), load_qa(WINE / "eval.jsonl")
    assert len(docs) >= 48
    assert len(train) + len(evals) >= 150
    ids = {doc.id for doc in docs}
    assert all(qa.source in ids for qa in train + evals)
    # Held-out questions are about documents never used in training.
    assert not {qa.source for qa in train} & {qa.source for qa in evals}


# ------------------------------------------------------------------------------------ the recipe's data section


def data_section(**fields) -> DataSection:
    return DataSection.model_validate(fields)


def test_winemag_recipe_reads_a_users_csv(winemag_csv):
    path = winemag_csv(name="winemag-data-130k-v2.csv")
    recipe = load_recipe(ROOT / "recipes" / "winemag.yaml", [f"data.corpus.0.path={path}"])
    dataset = load_dataset(recipe.data)
    assert len(dataset.documents) == 10
    assert dataset.documents[0].id == "winemag-data-130k-v2#10"
    assert dataset.documents[0].metadata["variety"] == "Sangiovese"
    ids = {doc.id for doc in dataset.documents}
    assert dataset.train and dataset.eval
    assert all(qa.source in ids for qa in dataset.train + dataset.eval)
    assert not {qa.source for qa in dataset.train} & {qa.source for qa in dataset.eval}


def test_question_files_and_generated_questions_together(winemag_csv):
    csv_entry = {"path": str(winemag_csv()), "template": "{title}. {description}", "id_column": "id",
                 "questions": {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}],
                               "eval_fraction": 0.25}}
    data = data_section(corpus=[str(WINE / "docs.jsonl"), csv_entry], train=WINE / "train.jsonl",
                        eval=WINE / "eval.jsonl")
    dataset = load_dataset(data)
    file_train, file_eval = load_qa(WINE / "train.jsonl"), load_qa(WINE / "eval.jsonl")
    assert dataset.train[: len(file_train)] == file_train
    assert dataset.eval[: len(file_eval)] == file_eval
    generated = dataset.train[len(file_train):] + dataset.eval[len(file_eval):]
    assert len(generated) == 8  # one per row, minus the two rows sharing a title
    assert {qa.source for qa in generated} <= {doc.id for doc in dataset.documents}
    assert len(dataset.documents) == len(load_documents([WINE / "docs.jsonl"])) + 10


def test_generated_questions_can_stand_alone_but_not_be_empty(winemag_csv):
    rows = [[row[0], *row[1:11], "", *row[12:]] for row in WINEMAG_ROWS]  # no titles: no question
    entry = {"path": str(winemag_csv(rows=rows)), "template": "{description}",
             "questions": {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}]}}
    with pytest.raises(DataError, match="^no training questions"):
        load_dataset(data_section(corpus=[entry]))


def test_duplicate_document_id_across_entries(tmp_path, winemag_csv):
    jsonl = write_jsonl(tmp_path / "extra.jsonl", [{"id": "reviews#11", "text": "clash"}])
    entry = data_section(corpus=[{"path": str(winemag_csv()), "template": "{title}", "id_column": "id"}],
                         train=jsonl, eval=jsonl).corpus[0]
    clash = r"extra.jsonl:1: duplicate document id 'reviews#11' \(first in .*reviews.csv:3\)"
    with pytest.raises(DataError, match=clash):
        load_documents([entry, jsonl])


def test_no_documents_in_a_folder_of_empty_files(tmp_path):
    (tmp_path / "a.md").write_text("")
    (tmp_path / "b.txt").write_text(" \n")
    with pytest.raises(DataError, match="^no documents in "):
        load_documents([tmp_path])


def test_csv_settings_on_a_folder_without_csv_files_name_the_entry(tmp_path):
    # The recipe can check a single file's suffix; a folder's files are known only when they are read.
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# Barolo\n\nMade from Nebbiolo.\n")
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Which grape?", "answer": "Nebbiolo"}])
    entry = data_section(corpus=[{"path": str(folder), "template": "{title}", "metadata_columns": ["country"]}],
                         train=qa, eval=qa).corpus[0]
    with pytest.raises(DataError, match=rf"^{re.escape(str(folder))}: template, id_column, .* no \.csv file is in it"):
        load_documents([entry])
    plain = data_section(corpus=[{"path": str(folder)}], train=qa, eval=qa).corpus[0]
    assert [d.id for d in load_documents([plain])] == ["a#barolo"]


@pytest.mark.parametrize(
    "line, what",
    [
        (r'{"question": "\udc80?", "answer": "A", "source": "grape-nebbiolo"}', "'question'"),
        (r'{"question": "Q?", "answer": "\ud800"}', "'answer'"),
        (r'{"question": "Q?", "answer": "A", "aliases": ["ok", "b\udfff"]}', "an 'aliases' entry"),
        (r'{"question": "Q?", "answer": "A", "source": "\ud800"}', "'source'"),
    ],
)
def test_qa_lone_surrogate_names_file_line_and_field(tmp_path, line, what):
    # Caught when the file is read, not later in the tokenizer of a training or reward run.
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, line])
    with pytest.raises(DataError) as err:
        load_qa(path)
    assert str(err.value).startswith(f"{path}:2: {what} holds a lone surrogate ")


def test_an_eval_split_that_is_not_held_out_is_warned_about(tmp_path, caplog):
    """The report calls eval held out; the shipped wine split is (no warning), a copied file or a shared
    document is not."""
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[str(WINE / "docs.jsonl")], train=WINE / "train.jsonl",
                                  eval=WINE / "eval.jsonl"))
    assert not caplog.records
    train = load_qa(WINE / "train.jsonl")
    shared = write_jsonl(tmp_path / "eval.jsonl", [
        {"question": "  which bank of Bordeaux does  Cabernet Sauvignon dominate?", "answer": "Left Bank"},
        {"question": "Which river?", "answer": "Ebro", "source": train[5].source},
    ])
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[str(WINE / "docs.jsonl")], train=WINE / "train.jsonl", eval=shared))
    assert "1 of 2 eval questions are also training questions (first: '  which bank" in caplog.text
    assert f"1 of 2 eval questions ask about documents that training questions use too (first: 'Which river?', " \
           f"source {train[5].source!r}): the eval split is not held out by document" in caplog.text


def test_a_question_asked_twice_in_a_split_is_warned_about(tmp_path, caplog):
    eval_ = write_jsonl(tmp_path / "eval.jsonl", [
        {"question": "Which river runs through Rioja?", "answer": "Ebro"},
        {"question": "Which grape is Barolo made from?", "answer": "Nebbiolo"},
        {"question": "which river runs  through Rioja?", "answer": "Ebro"},
    ])
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[str(WINE / "docs.jsonl")], train=WINE / "train.jsonl", eval=eval_))
    assert "1 of 3 eval questions in the data repeat an earlier one (first: 'which river runs  through Rioja?'); " \
           "each copy counts in the eval means and intervals" in caplog.text
    assert "training questions in the data repeat" not in caplog.text  # the shipped training file has no repeats


def test_a_source_named_by_its_headings_as_written_points_at_the_markdown_id(tmp_path, caplog):
    # The README's table said `file#heading/subheading`: written so, the source matched no document, and the
    # warning gave only a count (recall@1 0.000).
    (tmp_path / "grapes.md").write_text("# Grapes\n\n## Pinot Noir\n\nBurgundy's red grape.\n")
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "Where?", "answer": "Burgundy",
                                                   "source": "grapes#grapes/pinot-noir"}])
    held_out = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Which?", "answer": "Burgundy",
                                                      "source": "grapes#Grapes/Pinot Noir"},
                                                     {"question": "What?", "answer": "red", "source": "nowhere"}])
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[str(tmp_path / "grapes.md")], train=train, eval=held_out))
    assert ("2 questions name a source that is no corpus document (the first: 'grapes#Grapes/Pinot Noir'; did you "
            "mean 'grapes#grapes/pinot-noir'? Markdown ids are slugs)") in caplog.text
    caplog.clear()
    one = write_jsonl(tmp_path / "one.jsonl", [{"question": "What?", "answer": "red", "source": "nowhere"}])
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[str(tmp_path / "grapes.md")], train=train, eval=one))
    assert ("1 question names a source that is no corpus document (the first: 'nowhere'); retrieval recall counts it "
            "as a miss") in caplog.text


def test_generated_questions_whose_document_lacks_the_answer_are_warned_about(winemag_csv, caplog):
    # The row template leaves `points` out: no retrieved context can answer "How many points...?".
    entry = {"path": str(winemag_csv()), "template": "{title}: a {variety} from {country}. {description}",
             "id_column": "id", "questions": {"templates": [
                 {"question": "Which grape variety is '{title}'?", "answer": "variety"},
                 {"question": "How many points did '{title}' get?", "answer": "points"}]}}
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[entry]))
    assert "8 of 16 questions generated from CSV rows have an answer their row's document does not hold" in caplog.text
    assert "How many points" in caplog.text
    caplog.clear()
    entry["questions"]["templates"].pop()
    with caplog.at_level("WARNING", logger="toolkit.data"):
        load_dataset(data_section(corpus=[entry]))
    assert not caplog.records


def test_generated_questions_from_a_single_row_say_why_eval_is_empty(winemag_csv):
    # The CSV is not empty: its one row with questions goes to training, and nothing is left to hold out.
    entry = {"path": str(winemag_csv(rows=WINEMAG_ROWS[:1])), "template": "{title}: a {variety}. {description}",
             "questions": {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}]}}
    with pytest.raises(DataError, match="^no eval questions: the questions generated from CSV rows all come from one "
                                        "row, which goes to training"):
        load_dataset(data_section(corpus=[entry]))
    load_dataset(data_section(corpus=[entry], eval=WINE / "eval.jsonl"))  # a question file fills the eval side


def test_a_question_that_rows_of_two_csv_entries_generate_is_dropped(tmp_path, winemag_csv):
    # One wine reviewed in two files: each entry splits its own rows, so its copies could land on both sides.
    first, second = winemag_csv(name="2019.csv"), winemag_csv(name="2020.csv", rows=WINEMAG_ROWS[:2])
    questions = {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}],
                 "eval_fraction": 0.5}
    data = data_section(corpus=[{"path": str(path), "template": "{title}: a {variety}. {description}",
                                 "id_column": "id", "questions": questions} for path in (first, second)])
    dataset = load_dataset(data)
    asked = [qa.question for qa in dataset.train + dataset.eval]
    assert len(asked) == len(set(asked)) == 6  # the first file's 8 questions less the 2 the second file asks too
    assert not any(title in question for title in (WINEMAG_ROWS[0][11], WINEMAG_ROWS[1][11]) for question in asked)


def test_rows_that_give_no_question_are_counted(winemag_csv, caplog):
    entry = {"path": str(winemag_csv()), "template": "{title}: a {variety}. {description}", "id_column": "id",
             "questions": {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}],
                           "eval_fraction": 0.25}}
    with caplog.at_level("INFO", logger="toolkit.data"):
        load_dataset(data_section(corpus=[entry]))
    # The two rows sharing a title: their question is ambiguous, so neither gives one.
    assert "reviews.csv: 2 of 10 rows give no question" in caplog.text
    assert "of the rest, 2 are held out for eval" in caplog.text


def test_two_csv_entries_of_one_row_each_are_not_called_one_row(winemag_csv):
    # Each entry splits its own rows, so each keeps its one row for training; the message said they "all come from
    # one row", sending the user to look for a single row in two files.
    entries = [{"path": str(winemag_csv(name=f"{i}.csv", rows=WINEMAG_ROWS[i:i + 1])),
                "template": "{title}: a {variety}. {description}",
                "questions": {"templates": [{"question": "Which grape variety is '{title}'?", "answer": "variety"}]}}
               for i in range(2)]
    with pytest.raises(DataError, match="^no eval questions: the questions generated from CSV rows come from 2 rows, "
                                        "but each corpus entry splits its own rows") as err:
        load_dataset(data_section(corpus=entries))
    assert "one row" not in str(err.value)
