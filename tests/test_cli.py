"""What the commands share (toolkit.cli): the argument parser's one-line usage errors and whole descriptions, and
the `--run` folder check."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ["run", "evaluate", "export", "chat", "search", "index", "rewards.__main__"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_recipe_is_one_line_naming_only_the_recipe(command, capsys):
    main = importlib.import_module(f"toolkit.{command}").main
    with pytest.raises(SystemExit) as exit_:
        main([] if command != "rewards.__main__" else ["--completion", "x"])
    assert exit_.value.code == 2
    # argparse alone prints its usage block first and also lists the optional overrides as required
    missing = "recipe, query" if command == "search" else "recipe"
    assert capsys.readouterr().err == f"error: the following arguments are required: {missing} (see --help)\n"


@pytest.mark.parametrize("command", ["run", "evaluate", "export", "chat", "search"])
def test_help_gives_the_docstring_s_first_paragraph_whole(command, capsys):
    module = importlib.import_module(f"toolkit.{command}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    first = " ".join(module.__doc__.strip().split("\n\n")[0].split())
    assert first in " ".join(capsys.readouterr().out.split())
    assert first.endswith((".", "?"))  # a sentence, not a line cut short


@pytest.mark.parametrize("command", ["chat", "export"])
@pytest.mark.parametrize("name, message", [
    ("nope", "{path}: no such folder"),
    ("report.json", "{path} is a file; it takes a run folder (the output_dir of toolkit.run)"),
    ("adapter", "{path} is inside a run; did you mean --run {run}?"),
])
def test_run_flag_that_is_not_a_run_folder_is_one_line(tmp_path, capsys, command, name, message):
    # Each reader said its own part was missing, with a hint to build it there: an index inside a file, or
    # inside a run's adapter/ folder.
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "report.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"toolkit.{command}").main(["recipes/wine.yaml", "--run", str(run / name)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: argument --run: {message.format(path=run / name, run=run)} " \
                                      "(see --help)\n"
