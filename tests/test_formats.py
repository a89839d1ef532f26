"""Tests for toolkit.formats: each format's documents (JSON lines, CSV rows) and one-line errors naming the file and
line. Markdown (sections, front matter) is in test_formats_markdown.py."""

from __future__ import annotations

import json
import re

import pytest
from conftest import WINEMAG_COLUMNS, WINEMAG_ROWS

from toolkit.formats import load_file
from toolkit.loaders import DataError, Document

WINEMAG_TEMPLATE = "{title}: a {variety} from {province}, {country}. {description}"


def docs_of(path, file_id=None, **kwargs) -> list[Document]:
    return [doc for doc, _ in load_file(path, file_id or path.stem, **kwargs).documents]



# ------------------------------------------------------------------------------------------- empty files


@pytest.mark.parametrize(
    "name, message", [("empty.md", "empty document"), ("empty.jsonl", r"empty document \(no JSON lines\)")]
)
def test_empty_file_is_an_error_only_when_named(tmp_path, name, message):
    (tmp_path / name).write_text("  \n\n")
    with pytest.raises(DataError, match=f"{name}: {message}$"):
        docs_of(tmp_path / name)
    assert docs_of(tmp_path / name, explicit=False) == []


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        # An export that wrote the header and nothing else, and rows with nothing in the template's columns: named
        # beside other entries, such a file added nothing, without a word.
        ("reviews.csv", "id,title,variety\r\n", {"template": "{title}"}, "no documents: no row below the header has "
         "a value in the template's columns (title)"),
        ("reviews.csv", "id,title,variety\n1,,Red\n2, ,White\n", {"template": "{title}"},
         "no documents: no row below the header has a value in the template's columns (title)"),
        ("outline.md", "# Wine\n\n## Grapes\n", {}, "no documents: only headings, with no text under them"),
        ("note.md", "---\ntitle: Barolo\n---\n\n# Barolo\n", {},
         "no documents: no text outside the front matter and headings"),
    ],
)
def test_a_named_file_that_gives_no_document_is_an_error(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=f"{name}: {re.escape(message)}$"):
        docs_of(tmp_path / name, **kwargs)
    assert docs_of(tmp_path / name, explicit=False, **kwargs) == []  # in a folder or glob, left out as an empty file


# ------------------------------------------------------------------------------------------- jsonl


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"source": "x"}, "metadata key 'source' is reserved for the index"),
        # Chroma refused these only when the index wrote its batch, with its own traceback.
        ({"#tags": "red"}, "metadata key '#tags' cannot be stored in the index (Chroma refuses a key that is empty"),
        ({"chroma:document": "x"}, "metadata key 'chroma:document' cannot be stored in the index"),
        ({"chroma:note": "x"}, "metadata key 'chroma:note' cannot be stored in the index"),  # Chroma dropped it
        ({"tags": ["a", "b"]}, "metadata 'tags' must be a string, number or boolean, got list"),
        ("Italy", "'metadata' must be an object"),
        # json reads NaN and Infinity, and Chroma dropped them without a word.
        ({"x": float("nan")}, "metadata 'x' must be a finite number, got nan"),
        ({"x": float("-inf")}, "metadata 'x' must be a finite number, got -inf"),
    ],
)
def test_jsonl_metadata_errors(tmp_path, metadata, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "t", "metadata": metadata}) + "\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: {re.escape(message)}"):
        docs_of(path)


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    # json.dumps(..., ensure_ascii=False) writes U+2028 and U+0085 raw; they do not end a JSON line.
    path = tmp_path / "docs.jsonl"
    text = "line one\u2028line two\x85three"
    path.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\r\n"
                    + json.dumps({"id": "b", "text": "b"}) + "\n", encoding="utf-8")
    assert [(d.id, d.text) for d in docs_of(path)] == [("a", text), ("b", "b")]


# ------------------------------------------------------------------------------------------- csv


def test_csv_rows_become_documents(winemag_csv):
    path = winemag_csv()
    docs = docs_of(path, template=WINEMAG_TEMPLATE, id_column="id", metadata_columns=["country", "points", "price"])
    assert len(docs) == len(WINEMAG_ROWS)
    assert docs[0] == Document(
        "reviews#10",
        "Castello Verde 2016 Riserva (Chianti Classico): a Sangiovese from Tuscany, Italy. Sour cherry and dried "
        "herbs, firm tannins.",
        "",
        {"country": "Italy", "points": 91, "price": 35},
    )
    by_id = {doc.id: doc for doc in docs}
    # Empty cells are left out of the metadata (Chroma cannot store None); decimals become floats.
    assert by_id["reviews#11"].metadata == {"country": "Spain", "points": 88}
    assert by_id["reviews#14"].metadata["price"] == 30.5
    assert by_id["reviews#13"].text.startswith("Nowhere Cellars NV Red: a Red Blend from , . ")
    # Quotes, commas, braces and newlines inside cells come through verbatim.
    assert by_id["reviews#17"].text.endswith('Dark fruit, "big" and plush, with {braces} kept.')
    assert by_id["reviews#18"].text.endswith("Fig, walnut and caramel.\nLong and warm.")


def test_csv_without_id_column_numbers_rows(winemag_csv):
    docs = docs_of(winemag_csv(), template="{title}")
    assert [d.id for d in docs[:3]] == ["reviews#1", "reviews#2", "reviews#3"]
    assert docs[0].metadata == {}


def test_csv_row_with_none_of_the_template_s_cells_is_no_document(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(",title,description\n0,Barolo,Tar and roses.\n1,,\n2,Rioja,\n")
    docs = docs_of(path, template="{title}: {description}", id_column="id")
    assert [(d.id, d.text) for d in docs] == [("reviews#0", "Barolo: Tar and roses."), ("reviews#2", "Rioja: ")]


def test_csv_blank_first_header_cell_is_the_id(winemag_csv):
    # Kaggle's winemag-data-130k-v2.csv (written by pandas) has no name for its first, index column.
    path = winemag_csv(header=["", *WINEMAG_COLUMNS[1:]])
    assert docs_of(path, template="{title}", id_column="id")[0].id == "reviews#10"


def test_csv_rows_are_kept_for_questions(winemag_csv):
    loaded = load_file(winemag_csv(), "reviews", template="{title}", id_column="id", row_columns=["title", "variety"])
    assert loaded.rows[0].doc_id == "reviews#10"
    assert loaded.rows[0].values == {
        "id": "10", "title": "Castello Verde 2016 Riserva (Chianti Classico)", "variety": "Sangiovese"
    }
    assert loaded.rows[0].line == 2
    assert load_file(winemag_csv(), "reviews", template="{title}").rows == []  # not kept unless asked


@pytest.mark.parametrize(
    "kwargs, line, message",
    [
        ({"template": "{title} from {region}"}, 1, "template 'region' is not a column of this file (columns: id, "),
        ({"template": "{title}", "id_column": "row_id"}, 1, "id_column 'row_id' is not a column"),
        ({"template": "{title}", "metadata_columns": ["colour"]}, 1, "metadata column 'colour' is not a column"),
        ({"template": "{title}", "row_columns": ["grape"]}, 1, "question column 'grape' is not a column"),
    ],
)
def test_csv_missing_column_names_column_and_line(winemag_csv, kwargs, line, message):
    path = winemag_csv()
    with pytest.raises(DataError) as err:
        load_file(path, "reviews", **kwargs)
    assert str(err.value).startswith(f"{path}:{line}: {message}")


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_csv_with_another_delimiter_says_so(tmp_path, delimiter):
    # A European spreadsheet's export: the whole header is one column, and the error should say why.
    path = tmp_path / "wines.csv"
    path.write_text(f"id{delimiter}title{delimiter}variety\n1{delimiter}Tokaji{delimiter}Furmint\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_file(path, "wines", template="{title}: {variety}")
    assert str(err.value).endswith(f"; the file looks {delimiter!r}-delimited, but a .csv corpus file must use commas")
    # A comma-separated header that merely lacks the column gets no such guess.
    path.write_text("id,title;note\n1,Tokaji;sweet\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_file(path, "wines", template="{variety}")
    assert str(err.value).endswith("(columns: id, title;note)")


def test_csv_short_row_names_its_line_and_the_missing_column(winemag_csv):
    rows = [WINEMAG_ROWS[0], WINEMAG_ROWS[1][:11]]  # a truncated record: no title, variety or winery
    path = winemag_csv(rows=rows)
    with pytest.raises(DataError) as err:
        load_file(path, "reviews", template=WINEMAG_TEMPLATE)
    assert str(err.value) == f"{path}:3: row 2 has 11 of 14 columns: no value for 'title', 'variety'"


def test_csv_row_with_more_cells_than_columns_is_an_error(winemag_csv):
    # An unquoted comma in a description shifted every later cell one column right: the price became the points
    # and questions got wrong gold answers, with exit 0.
    rows = [WINEMAG_ROWS[0], [*WINEMAG_ROWS[1][:2], "Tart", " with lime", *WINEMAG_ROWS[1][3:]]]
    path = winemag_csv(rows=rows)
    with pytest.raises(DataError) as err:
        load_file(path, "reviews", template=WINEMAG_TEMPLATE)
    assert str(err.value) == f"{path}:3: row 2 has 15 cells for 14 columns; quote a cell that holds a comma"
    # Empty cells past the last column (a spreadsheet's trailing commas) are no data and are fine.
    path = winemag_csv(rows=[[*WINEMAG_ROWS[0], "", " "], WINEMAG_ROWS[1]])
    assert len(load_file(path, "reviews", template=WINEMAG_TEMPLATE).documents) == 2


def test_csv_quote_left_open_is_an_error_not_a_merged_row(winemag_csv):
    path = winemag_csv()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ',"Unclosed quote ', 1)  # row 2's second cell opens a quote never closed
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_file(path, "reviews", template=WINEMAG_TEMPLATE)
    # The line of the row with the open quote, not the later line where the reader noticed it (the next quote
    # in the file closes it, and strict mode refuses the text after that).
    assert str(err.value).startswith(f"{path}:3: invalid CSV in the row that starts on this line: ")


def test_a_quote_never_closed_names_the_line_it_opens_on(tmp_path):
    path = tmp_path / "wines.csv"
    rows = ['1,Tokaji,"Sweet'] + [f"{i},Wine {i},Dry" for i in range(2, 500)]
    path.write_text("id,name,style\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_file(path, "wines", template="{name}: {style}")
    assert str(err.value) == (f"{path}:2: a quoted cell in the row that starts on this line is never closed "
                              "(invalid CSV: the quote runs to the end of the file)")


def test_a_stray_quote_names_the_line_of_its_row(winemag_csv):
    path = winemag_csv()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ',"quoted" then more,', 1)  # text after a closing quote: strict refuses it
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_file(path, "reviews", template=WINEMAG_TEMPLATE)
    assert str(err.value).startswith(f"{path}:3: invalid CSV in the row that starts on this line: ")


@pytest.mark.parametrize(
    "ids, message",
    [(["10", "10"], "duplicate 'id' '10' (first on line 2)"), (["10", " "], "row 2 has an empty 'id'")],
)
def test_csv_ids_must_be_unique_and_present(winemag_csv, ids, message):
    rows = [[ids[0], *WINEMAG_ROWS[0][1:]], [ids[1], *WINEMAG_ROWS[1][1:]]]
    path = winemag_csv(rows=rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: {re.escape(message)}$"):
        load_file(path, "reviews", template="{title}", id_column="id")


def test_csv_rows_are_named_by_the_line_they_start_on(winemag_csv):
    # Row 18's description spans two lines; a later duplicate of its id names where each record starts.
    port = next(row for row in WINEMAG_ROWS if row[0] == "18")
    assert "\n" in port[2]
    rows = [WINEMAG_ROWS[0], port, port]
    path = winemag_csv(rows=rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:5: duplicate 'id' '18' \(first on line 3\)$"):
        load_file(path, "reviews", template="{title}", id_column="id")
    assert [r.line for r in load_file(winemag_csv(rows=rows[:2]), "reviews", template="{title}",
                                      row_columns=["title"]).rows] == [2, 3]


def test_csv_leaves_the_process_wide_field_limit_as_it_was(winemag_csv):
    import csv

    before = csv.field_size_limit(131072)  # Python's default (an earlier load in this process may have raised it)
    try:
        docs_of(winemag_csv(), template="{title}")
        assert csv.field_size_limit() == 131072
    finally:
        csv.field_size_limit(before)


def test_csv_needs_a_template(winemag_csv):
    path = winemag_csv()
    with pytest.raises(DataError, match="a .csv corpus file needs a row template"):
        load_file(path, "reviews")


@pytest.mark.parametrize(
    "header, message", [(["id", "", "title"], "column 2 of the header has no name"),
                        (["id", "title", "title"], "column name 'title' appears twice")],
)
def test_csv_header_problems(winemag_csv, header, message):
    path = winemag_csv(rows=[["1", "a", "b"]], header=header)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: {message}"):
        load_file(path, "reviews", template="{title}")


def test_a_question_file_in_the_corpus_says_so(tmp_path):
    # A folder in data.corpus holding the question files too said "'text' must be a non-empty string, got none
    # (the key is missing)", which names the symptom, not the file that does not belong there.
    from toolkit.data import load_documents

    (tmp_path / "notes.md").write_text("# Bees\n\nBees make wax.\n")
    (tmp_path / "train.jsonl").write_text('{"question": "What do bees make?", "answer": "wax"}\n')
    with pytest.raises(DataError) as err:
        load_documents([tmp_path])
    assert str(err.value) == (f"{tmp_path / 'train.jsonl'}:1: a question, not a document (no 'text'): question files "
                              "go in data.train and data.eval; keep them out of the folders and globs of data.corpus")


# ------------------------------------------------------------------------------------------- text that is not Unicode


@pytest.mark.parametrize(
    "line, what",
    [
        (r'{"text": "caf\ud800"}', "'text'"),
        (r'{"text": "t", "title": "\udc80"}', "'title'"),
        (r'{"id": "a\udfff", "text": "t"}', "'id'"),
        (r'{"text": "t", "metadata": {"region": "Pi\ud800"}}', "metadata 'region'"),
        (r'{"text": "t", "metadata": {"re\ud800": "x"}}', "a 'metadata' key"),
    ],
)
def test_jsonl_lone_surrogate_names_file_line_and_field(tmp_path, line, what):
    # A JSON \ud800 escape with no partner decodes to a lone surrogate, which hashing and the tokenizer refuse.
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        docs_of(path)
    assert str(err.value).startswith(f"{path}:2: {what} holds a lone surrogate ")
    assert "not valid Unicode text" in str(err.value) and "\n" not in str(err.value)
    str(err.value).encode("utf-8")  # the message itself can be printed
