"""Outputs are written whole or not at all, and the report renders the three columns, intervals and curves."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from matplotlib.image import imread
from rich.console import Console

from toolkit.curves import render_plots, training_curves, training_warnings
from toolkit.metrics import summarize
from toolkit.report import (
    cannot_write,
    comparison_table,
    in_the_way,
    render_markdown,
    save_dir_atomic,
    verdicts,
    write_atomic,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_cannot_write_tries_the_nearest_existing_folder_and_leaves_nothing(tmp_path):
    assert cannot_write(tmp_path / "new" / "deeper") is None
    assert cannot_write(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe folder is gone, and nothing was created on the way
    assert cannot_write(Path("/proc/toolkit/x")).startswith("cannot make a folder in /proc (")


def test_write_atomic_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "report.json"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, object())  # not text: the write fails after the temp file was created
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_save_dir_atomic_failure_keeps_previous_dir(tmp_path):
    target = tmp_path / "adapter"
    save_dir_atomic(target, lambda d: (d / "weights").write_text("v1"))

    def crash(d):
        (d / "weights").write_text("half")
        raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        save_dir_atomic(target, crash)
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    save_dir_atomic(target, lambda d: (d / "weights").write_text("v2"))
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_save_dir_atomic_puts_the_previous_dir_back_when_the_final_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    save_dir_atomic(target, lambda d: (d / "weights").write_text("v1"))
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new folder into place: after the old one was moved aside
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_dir_atomic(target, lambda d: (d / "weights").write_text("v2"))
    assert calls[0] == ("adapter", ".adapter.old")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("leftover", ["link", "file", "folder"])
def test_save_dir_atomic_replaces_a_link_and_clears_any_leftover(tmp_path, leftover):
    # A crash can leave .adapter.old as anything; rmtree cannot remove a link, and a rename of a folder onto a
    # link or a file fails: every later save failed the same way.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("theirs")
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter").symlink_to(elsewhere)
    old = run / ".adapter.old"
    {"link": lambda: old.symlink_to(elsewhere), "file": lambda: old.write_text("x"), "folder": old.mkdir}[leftover]()
    save_dir_atomic(run / "adapter", lambda d: (d / "weights").write_text("v1"))
    assert not (run / "adapter").is_symlink() and (run / "adapter" / "weights").read_text() == "v1"
    assert sorted(p.name for p in run.iterdir()) == ["adapter"]
    assert (elsewhere / "keep").read_text() == "theirs"  # only the link went, never what it pointed to


def test_a_linked_folder_that_is_replaced_whole_is_in_the_way(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "adapter").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "trainer").symlink_to(tmp_path / "elsewhere")
    assert in_the_way(tmp_path, folders=("trainer",)) is None  # written into: a link is fine
    assert in_the_way(tmp_path, folders=("trainer",), whole=("adapter",)) == (
        f"{tmp_path / 'adapter'} is a link, and a folder replaces it whole; link the output folder instead")
    (tmp_path / "merged").write_text("x")
    assert "merged is a file, and a folder is written there" in in_the_way(tmp_path, whole=("merged",))


def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path):
    # mkstemp and mkdtemp create 0600 files and 0700 folders; once renamed into place, report.json and adapter/
    # must have what open() and mkdir() would give under the user's umask.
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "report.json", "{}")
        save_dir_atomic(tmp_path / "adapter", lambda d: (d / "weights").write_text("w"))
        assert os.umask(0o027) == 0o027  # reading the umask left it as it was
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o750


def test_one_question_is_singular():
    found = {"mean": 1.0, "low": 1.0, "high": 1.0, "significant": False, "questions": 1}
    report = {
        "recipe": {"output_dir": "runs/x", "model": {"name_or_path": "m"}},
        "base": {"answer_match": 0.0}, "tuned": {"answer_match": 1.0}, "eval": {"questions": 1},
        "differences": {"tuned - base": {"answer_match": found}},
    }
    assert "evaluated on 1 held-out question (" in render_markdown(report)
    assert comparison_table(report).title.startswith("1 eval question, greedy;")
    assert verdicts(report)[0].endswith("over 1 question: not significant (too few questions: see "
                                        "toolkit.metrics.MIN_QUESTIONS)")


def test_markdown_and_console_table():
    base = {"answer_match": 0.1, "format": 0.0}
    tuned = {"answer_match": 0.5, "format": 0.9}
    report = {
        "recipe": {"output_dir": "runs/x", "model": {"name_or_path": "m"}},
        "base": base, "tuned": tuned, "eval": {"questions": 10},
        "training": {"steps": 3, "wall_seconds": 12.0},
    }
    text = render_markdown(report)  # means only: no intervals, no differences, no no-context column
    assert "| metric | base + RAG | tuned + RAG |" in text
    assert "| answer_match | 0.100 | 0.500 |" in text
    assert "| format | 0.000 | 0.900 |" in text
    assert "10 held-out questions" in text
    table = comparison_table(report)
    assert table.row_count == 2
    assert table.title.endswith("n.s.: interval spans 0, or fewer than 5 questions")  # metrics.MIN_QUESTIONS


@pytest.mark.parametrize("training, header", [
    ({"steps": 6, "wall_seconds": 61.2}, "6 GRPO steps in 61 s"),
    ({"steps": 1, "wall_seconds": 9.0}, "1 GRPO step in 9 s"),  # said "1 GRPO steps"
    ({"steps": 6, "wall_seconds": 61.2, "resumed_from_step": None}, "6 GRPO steps in 61 s"),
    # A resumed run's wall_seconds timed only the steps past its checkpoint: it said "6 GRPO steps in 15 s".
    ({"steps": 6, "wall_seconds": 15.2, "resumed_from_step": 4},
     "6 GRPO steps (steps 5-6 trained in 15 s, resumed from step 4)"),
    ({"steps": 5, "wall_seconds": 7.6, "resumed_from_step": 4}, "5 GRPO steps (step 5 trained in 8 s, resumed from "
                                                                  "step 4)"),
    # A checkpoint already at max_steps trains nothing: it said "4 GRPO steps in 0 s".
    ({"steps": 4, "wall_seconds": 0.1, "resumed_from_step": 4},
     "4 GRPO steps, all from the checkpoint at step 4 (resumed; none trained again)"),
])
def test_the_header_says_which_steps_the_training_time_covers(training, header):
    report = {"recipe": {"output_dir": "runs/x", "model": {"name_or_path": "m"}}, "base": {"answer_match": 0.1},
              "tuned": {"answer_match": 0.5}, "eval": {"questions": 10}, "training": training}
    assert render_markdown(report).splitlines()[2].startswith(f"Model `m`, {header}; evaluated on 10 held-out ")


def finished_run(tmp_path, history):
    """What toolkit.run writes for a finished 6-step run on 8 eval questions, built from hand-made results."""
    answers = {
        "no_context": [False, False, False, True, False, False, False, False],
        "base": [True, False, True, True, True, False, True, False],
        "tuned": [True, True, True, True, False, True, True, True],
    }
    per_question = {
        label: [{"answer_match": a, "format": float(label == "tuned"), "completion_tokens": 30 + i,
                 "retrieval_recall": None if label == "no_context" else i != 4} for i, a in enumerate(column)]
        for label, column in answers.items()
    }
    summary = summarize(per_question)
    curves = training_curves(history)
    images = render_plots(curves)
    report = {
        "recipe": {"output_dir": str(tmp_path), "model": {"name_or_path": "packaged:smollm2-135m-instruct"}},
        "eval": {"questions": 8, "top_k": 1, "bootstrap": summary["bootstrap"], "predictions": "eval/predictions.jsonl",
                 "columns": {"no_context": "question only", "base": "plain RAG", "tuned": "tuned RAG"}},
        **summary["means"],
        "intervals": summary["intervals"],
        "differences": summary["differences"],
        "warnings": training_warnings(curves),
        "training": {"steps": 6, "wall_seconds": 61.0, "curves": curves, "plots": list(images)},
    }
    predictions = [
        {"question": f"q{i}", "gold": "a", **{label: {"answer": "a", "scores": per_question[label][i]}
                                              for label in per_question}}
        for i in range(8)
    ]
    write_report(tmp_path, report, predictions, images)
    return report


def test_finished_run_report(tmp_path, log_history):
    report = finished_run(tmp_path, log_history())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report
    assert saved["base"]["answer_match"] == 0.625 and saved["no_context"]["answer_match"] == 0.125
    assert saved["tuned"]["answer_match"] == 0.875
    assert saved["no_context"]["retrieval_recall"] is None
    assert saved["differences"]["tuned - base"]["format"]["significant"]
    assert not saved["differences"]["tuned - base"]["answer_match"]["significant"]  # 3 wins, 1 loss of 8: could be luck
    assert saved["training"]["curves"]["series"]["reward"][0] == 0.2

    text = (tmp_path / "report.md").read_text()
    assert "| metric | no context | base + RAG | tuned + RAG | base − no context | tuned − base |" in text
    assert "| answer_match | 0.125 [" in text and "(n.s.)" in text and "**+1.000** [+1.000, +1.000]" in text
    assert "GRPO vs plain RAG (tuned − base), answer_match: +0.250 [" in text
    assert "over 8 questions: not significant" in text
    assert "| retrieval_recall | n/a | 0.875 [" in text
    assert "## Warnings" not in text
    for path in report["training"]["plots"]:
        assert f"]({path})" in text  # embedded with a path relative to report.md
        data = (tmp_path / path).read_bytes()
        assert data.startswith(PNG_MAGIC) and imread(io.BytesIO(data), format="png").ndim == 3
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["tuned"]["scores"]["answer_match"] is True
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind

    console = Console(width=200, record=True)
    console.print(comparison_table(report))
    shown = console.export_text()
    assert "no context" in shown and "tuned − base" in shown and "n.s." in shown and "[+1.000, +1.000]" in shown


def test_broken_training_is_flagged_in_the_report(tmp_path, log_history):
    finished_run(tmp_path, log_history(zero_std=1.0, clipped=1.0))
    text = (tmp_path / "report.md").read_text()
    assert "## Warnings" in text and text.count("**Training looked broken:**") == 2
    assert len(json.loads((tmp_path / "report.json").read_text())["warnings"]) == 2


def test_nan_and_inf_in_the_trainer_log_are_written_as_null(tmp_path, log_history):
    # TRL logs a NaN mean for a reward that returned None for a whole batch, and a diverging KL can be inf:
    # report.json got NaN and Infinity, which are not JSON (jq and JavaScript refuse the file).
    history = log_history(steps=3, kl=[0.01, float("inf"), 0.02])
    history[0]["rewards/answer_match/mean"] = float("nan")
    report = finished_run(tmp_path, history)
    assert "KL to the reference model exploded: inf at step 2" in report["warnings"][0]

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert saved["training"]["curves"]["series"]["kl"] == [0.01, None, 0.02]
    assert saved["training"]["curves"]["series"]["rewards/answer_match/mean"][:2] == [None, 0.1]
    assert "exploded: inf at step 2" in (tmp_path / "report.md").read_text()


def test_reward_labels_with_markup_or_pipes_stay_one_cell():
    names = ["reward/match[/exact]", "reward/[v2]", "reward/a|b"]
    report = {
        "recipe": {"output_dir": "runs/x", "model": {"name_or_path": "m"}}, "eval": {"questions": 10},
        "base": {name: 0.25 for name in names}, "tuned": {name: 0.5 for name in names},
    }
    rows = render_markdown(report).splitlines()
    assert "| reward/a\\|b | 0.250 | 0.500 |" in rows
    assert "| reward/[v2] | 0.250 | 0.500 |" in rows
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(comparison_table(report))  # raised MarkupError on "[/exact]"
    shown = console.export_text()
    assert "reward/match[/exact]" in shown and "reward/[v2]" in shown  # "[v2]" vanished as a markup tag


def test_a_full_disk_while_writing_the_report_is_one_line_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    # write_report's OSError came out of toolkit.run and toolkit.evaluate as a traceback, after the whole run, and
    # left new predictions (and plots) under the earlier report.json and report.md.
    import errno

    from toolkit.recipe_yaml import RecipeError

    report = {"recipe": {"output_dir": str(tmp_path), "model": {"name_or_path": "m"}}, "eval": {"questions": 1}}
    write_report(tmp_path, report, [{"question": "old"}])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = os.fdopen

    def full(fd, mode="r", **kwargs):
        f = real(fd, mode, **kwargs)
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".report.md."):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(os, "fdopen", full)
    with pytest.raises(RecipeError, match=f"^cannot write the report in {tmp_path}: No space left on device"):
        write_report(tmp_path, report, [{"question": "new"}])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # no temp file, nothing new
