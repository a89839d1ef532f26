"""`python -m toolkit.rewards`: score one completion against a recipe's question, as training would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.rewards.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
# Train question 3: "Which fruit aroma is typical of Cabernet Sauvignon wines?" (blackcurrant; aliases cassis, ...)
CLEAN = "<think>The context says blackcurrant.</think><answer>Blackcurrant</answer>"


def cli(*args, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "toolkit.rewards", *map(str, args)], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=600)


def test_scores_every_reward_of_the_recipe(tmp_path):
    done = cli("recipes/wine.yaml", "--completion", "-", "--question-index", "3", f"output_dir={tmp_path}",
               "rewards.0.weight=2", stdin=CLEAN)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Which fruit aroma is typical of Cabernet Sauvignon wines?" in out and "blackcurrant" in out
    assert "extracted answer 'Blackcurrant'" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("│")}
    assert rows["answer_match"] == ["│", "2", "│", "1.000", "│", "2.000", "│"]  # weight override applied
    assert set(rows) >= {"format_strict", "format_soft", "context_grounding", "length", "no_example_copy", "total"}
    assert rows["format_strict"][3] == "1.000"
    # 2 + 0.5 + 0.25 + 0.25 × 1 (grounded) + 0.25 × 1 (short) + 1 × 1 (not the example)
    assert rows["total"][-2] == "4.250"
    assert (tmp_path / "index").is_dir()  # the index lives under the recipe's output_dir


def test_the_docs_example_is_what_the_command_prints(tmp_path):
    done = cli("recipes/wine.yaml", "--completion", CLEAN, "--question-index", "3", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    doc = (ROOT / "docs" / "rewards.md").read_text(encoding="utf-8")
    example = doc[doc.index("$ python -m toolkit.rewards recipes/wine.yaml --question-index 3"):]
    example = example[:example.index("```")]

    def rows(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.startswith("│")]

    assert rows(example) == rows(done.stdout)  # a reward added to wine.yaml shows in the docs too


@pytest.mark.parametrize(("args", "message"), [
    (["--completion", "x", "--question-index", "999"],
     "error: --question-index 999 is out of range: the train split has 152 questions (0–151)"),
    (["--completion", "x", "--question-index", "-1", "--split", "eval"], "the eval split has 56 questions"),
    (["--completion", "x", "data.max_train_questions=5", "--question-index", "5"], "train split has 5 questions"),
    (["--completion", "x", "rewards.0.name=answr_match"], "error: recipes/wine.yaml: rewards.0: unknown reward"),
    (["--completion", "x", "rewards.0.name=nope.py:f"], "custom reward 'nope.py:f': file not found: nope.py"),
    (["--completion", "x", "--tokens", "-3"], "error: --tokens must be >= 0, got -3"),
    # Bytes that are not UTF-8 reach argv as lone surrogates; they used to be scored as an answer "\udcff".
    (["--completion", "<answer>\udcff</answer>"], "error: the completion is not valid UTF-8 text (a bad byte at "
                                                   "character 9)"),
    (["--question-index", "2"], "error: the following arguments are required: --completion"),
    (["--completion", "x", "--split", "test"], "error: argument --split: invalid choice: 'test'"),
    (["--completion", "x", "--question-index", "two"], "error: argument --question-index: invalid int value"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    try:
        code = main(["recipes/wine.yaml", *args])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_recipe_from_the_shell():
    done = cli("no/such/recipe.yaml", "--completion", "x")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: no/such/recipe.yaml: recipe file not found"
    assert done.stdout == ""



@pytest.mark.parametrize("tokens", ["99999999999999999999", "3000000000", "1000001"])
def test_tokens_has_an_upper_bound(capsys, tokens):
    # `--tokens` becomes a list of that many ids: 3e9 would take some 24 GB, 1e20 overflows.
    with pytest.raises(SystemExit) as stop:
        main(["recipes/wine.yaml", "--completion", "x", "--tokens", tokens])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: --tokens must be at most 1,000,000, got {tokens} (see --help)\n"


def test_a_lone_surrogate_in_a_question_file(capsys, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question":"\\udc80?","answer":"A","source":"grape-nebbiolo"}\n')
    code = main(["recipes/wine.yaml", "--completion", "x", f"data.train={questions}", f"output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {questions}:1: 'question' holds a lone surrogate '\\udc80'")
    assert not (tmp_path / "index").exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("toolkit.rewards.__main__.score_completion", interrupted)  # Ctrl-C while indexing
    try:
        code = main(["recipes/wine.yaml", "--completion", "x", f"output_dir={tmp_path}"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    captured = capsys.readouterr()
    assert code == 130 and not captured.out
    assert captured.err.strip() == "interrupted"


def test_a_reward_label_is_not_markup_in_the_score_table():
    # As in the run's console and live tables: "len[/short]" raised MarkupError, "[v2]" vanished.
    import io

    from rich.console import Console

    from toolkit.rewards.__main__ import _table

    out = io.StringIO()
    Console(file=out, width=120).print(_table([("len[/short]", 1.0, 0.5), ("fmt[v2]", 0.5, None)]))
    assert "len[/short]" in out.getvalue() and "fmt[v2]" in out.getvalue(), out.getvalue()


def test_the_datas_text_is_not_markup(monkeypatch, capsys, tmp_path):
    row = {"question": "Which [/b] grape?", "answer": "[v2]", "aliases": ["a[/i]"], "context_ids": ["doc[/x]:0:ab"]}

    def scored(*args, **kwargs):
        return row, [("answer_match", 1.0, 0.0)]

    monkeypatch.setattr("toolkit.rewards.__main__.score_completion", scored)
    assert main(["recipes/wine.yaml", "--completion", "<answer>[/u]</answer>", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for text in ("Which [/b] grape?", "[v2] (aliases: a[/i])", "doc[/x]:0:ab", "'[/u]'"):
        assert text in out, out

    def failing(*args, **kwargs):
        raise ValueError("data[/x].jsonl:3: bad")

    monkeypatch.setattr("toolkit.rewards.__main__.score_completion", failing)
    assert main(["recipes/wine.yaml", "--completion", "x", f"output_dir={tmp_path}"]) == 2
    assert "data[/x].jsonl:3: bad" in capsys.readouterr().err
