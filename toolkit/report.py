"""Run outputs: report.json, report.md, predictions and the adapter, each written to a temporary path and renamed.

A crash mid-write never leaves a half report or half adapter: readers see the previous file or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.table import Table


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_dir_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """`save(tmp_dir)` writes a folder; it then replaces `path` (a directory cannot be replaced in one rename,
    so the old one is moved aside first and removed only after the new one is in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def metric_names(base: dict, tuned: dict) -> list[str]:
    return list(dict.fromkeys([*base, *tuned]))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def comparison_table(base: dict, tuned: dict, n_questions: int) -> Table:
    table = Table(title=f"Eval split: {n_questions} questions, greedy decoding")
    for column in ("metric", "base", "tuned", "Δ"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in metric_names(base, tuned):
        b, t = base.get(name), tuned.get(name)
        delta = f"{t - b:+.3f}" if b is not None and t is not None else "—"
        table.add_row(name, _fmt(b), _fmt(t), delta)
    return table


def render_markdown(report: dict) -> str:
    base, tuned, training = report["base"], report["tuned"], report["training"]
    lines = [
        f"# Run report: {report['recipe']['output_dir']}",
        "",
        f"Model `{report['recipe']['model']['name_or_path']}`, {training['steps']} GRPO steps in "
        f"{training['wall_seconds']:.0f} s; evaluated on {report['eval']['questions']} held-out questions "
        "(greedy decoding, same prompts for both columns).",
        "",
        "| metric | base | tuned | Δ |",
        "|---|---:|---:|---:|",
    ]
    for name in metric_names(base, tuned):
        b, t = base.get(name), tuned.get(name)
        delta = f"{t - b:+.3f}" if b is not None and t is not None else "—"
        lines.append(f"| {name} | {_fmt(b)} | {_fmt(t)} | {delta} |")
    lines += [
        "",
        "`answer_match`: exact match with the gold answer or an alias after normalization; `format`: strict "
        "`<think>…</think><answer>…</answer>`; `reward_total`: the recipe's weighted reward sum.",
        "",
        "Files: `adapter/` (peft LoRA adapter), `report.json`, `predictions.jsonl` (per-question answers), `index/`.",
        "",
    ]
    return "\n".join(lines)


def write_report(output_dir: Path, report: dict, predictions: list[dict]) -> None:
    write_atomic(output_dir / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
    write_atomic(output_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(output_dir / "report.md", render_markdown(report))
