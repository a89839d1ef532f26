"""Outputs are written whole or not at all, and the report renders the before/after table."""

from __future__ import annotations

import pytest

from toolkit.report import comparison_table, render_markdown, save_dir_atomic, write_atomic


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


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


def test_markdown_and_console_table():
    base = {"answer_match": 0.1, "format": 0.0}
    tuned = {"answer_match": 0.5, "format": 0.9}
    report = {
        "recipe": {"output_dir": "runs/x", "model": {"name_or_path": "m"}},
        "base": base, "tuned": tuned, "eval": {"questions": 10},
        "training": {"steps": 3, "wall_seconds": 12.0},
    }
    text = render_markdown(report)
    assert "| answer_match | 0.100 | 0.500 | +0.400 |" in text
    assert "| format | 0.000 | 0.900 | +0.900 |" in text
    assert "10 held-out questions" in text
    table = comparison_table(base, tuned, 10)
    assert table.row_count == 2
