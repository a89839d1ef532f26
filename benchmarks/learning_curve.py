"""Learning check: does GRPO on the default wine recipe teach the 135M model the answer format? One JSON line.

    .venv/bin/python benchmarks/learning_curve.py                      # the full check (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/learning_curve.py training.max_steps=1 eval.limit=4   # a smoke test

Runs `recipes/wine.yaml` unchanged through `toolkit.run.run` (the same code as `python -m toolkit.run`), with its
28 GRPO steps (the recipe's comments give the measurements behind that choice). Extra `key=value` arguments are
recipe overrides; the output goes to a fresh folder under
`runs/bench/` (or `--output-dir`). Progress and the report table go to stderr; stdout gets only

    {"bench": "learning", "format_before": …, "format_after": …, "answer_match_before": …,
     "answer_match_after": …, "answer_match_ratio": …, "steps": …, "seconds": …, …}

read from the run's report.json: `*_before` is the base model with RAG, `*_after` the tuned one (same prompts,
greedy), both measured in the same run; `answer_match_ratio` is after / before (None when before is 0).
`seconds` is the whole run's wall time (index, three evaluations, training); `train_seconds` the GRPO part.
Target (issue 9): format_after ≥ 0.8 and answer_match_gain ≥ 0.30 within 10 minutes.
`--from-report runs/wine/report.json` prints the same line for a finished `make run` without training again.
The script runs in the project root: relative paths in the recipe and in overrides are read from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from toolkit.cli import ERRORS, Parser, fail, setup_logging
from toolkit.recipe import load_recipe
from toolkit.report import table_console
from toolkit.run import run

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_overrides("recipe overrides, e.g. training.max_steps=5 (paths in them are read from the project "
                         "root, where the script runs)")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "wine.yaml"))
    parser.add_argument("--output-dir", type=Path, help="default: a new folder under runs/bench/")
    parser.add_argument("--from-report", type=Path, metavar="REPORT_JSON",
                        help="print the line for a finished run (e.g. runs/wine/report.json from `make run`) "
                        "instead of training again")
    args = parser.parse_intermixed_args(argv)
    if args.from_report is not None:
        # It reads a finished run: anything that would shape a new one is a mistake, not a no-op to accept.
        ignored = [*(["--recipe"] if args.recipe != parser.get_default("recipe") else []),
                   *(["--output-dir"] if args.output_dir is not None else []), *args.overrides]
        if ignored:
            parser.error(f"--from-report reads a finished run; {', '.join(ignored)} would do nothing with it")
        try:
            report = json.loads(args.from_report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            parser.error(f"--from-report {args.from_report}: {getattr(err, 'strerror', None) or err}")
        refused = not_a_training_report(report)
        if refused:
            return fail(Console(stderr=True), ValueError(f"{args.from_report}: {refused}"))
        try:
            line = summary(report, None, args.from_report.parent)
        except (KeyError, TypeError, ValueError) as err:  # a section there, but not what a run writes in it
            return fail(Console(stderr=True), ValueError(f"{args.from_report}: not a complete training run's report "
                                                         f"({type(err).__name__}: {err})"))
        print(json.dumps(line), flush=True)
        return 0
    stderr = setup_logging()

    args.recipe = str(Path(args.recipe).resolve())  # the caller's path, before the chdir below
    if args.output_dir is not None:
        args.output_dir = args.output_dir.resolve()
    os.chdir(ROOT)  # recipe paths are relative to the project root
    made = None
    if args.output_dir is None:
        (ROOT / "runs" / "bench").mkdir(parents=True, exist_ok=True)
        args.output_dir = made = Path(tempfile.mkdtemp(prefix="learning-", dir=ROOT / "runs" / "bench"))
    try:
        recipe = load_recipe(args.recipe, [*args.overrides, f"output_dir={args.output_dir}"])
    except ERRORS as err:
        if made is not None:  # a mistyped override leaves no empty folder behind
            made.rmdir()
        return fail(stderr, err)
    start = time.perf_counter()
    # Everything the run prints (rich progress, library chatter) goes to stderr: stdout is the one JSON line.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = run(recipe, table_console(stderr=True))
    except ERRORS as err:
        return fail(stderr, err)
    seconds = time.perf_counter() - start

    print(json.dumps(summary(report, round(seconds, 1), args.output_dir)), flush=True)
    return 0


# What `summary` reads; toolkit.evaluate's report has the evaluation columns but no training section.
SECTIONS = ("training", "base", "tuned", "no_context", "differences", "eval")


def not_a_training_report(report) -> str | None:
    """Why `report` cannot give the line (a report of `python -m toolkit.evaluate`, say), or None."""
    if not isinstance(report, dict):
        return f"not a run report (a JSON object), got {type(report).__name__}"
    missing = next((key for key in SECTIONS if not isinstance(report.get(key), dict)), None)
    if missing is None:
        return None
    hint = ("; python -m toolkit.evaluate writes such reports: pass the report.json of a training run "
            "(python -m toolkit.run, make run)" if missing == "training" else "")
    return f"not a training run's report (no {missing} section){hint}"


def summary(report: dict, seconds: float | None, output_dir: Path) -> dict:
    """The JSON line: `seconds` is the whole run's wall time when this script ran it (None with --from-report)."""
    base, tuned = report["base"], report["tuned"]
    gain = report["differences"]["tuned - base"].get("answer_match", {})
    result = {
        "bench": "learning",
        "format_before": base["format"],
        "format_after": tuned["format"],
        "answer_match_before": base["answer_match"],
        "answer_match_after": tuned["answer_match"],
        "answer_match_ratio": round(tuned["answer_match"] / base["answer_match"], 3) if base["answer_match"] else None,
        "steps": report["training"]["steps"],
        "seconds": seconds,
        "train_seconds": report["training"]["wall_seconds"],
        "answer_match_no_context": report["no_context"]["answer_match"],
        "answer_match_gain": gain.get("mean"),
        "answer_match_gain_95ci": [gain.get("low"), gain.get("high")],
        "answer_match_after_significant": gain.get("significant"),
        "questions": report["eval"]["questions"],
        "warnings": len(report.get("warnings", [])),
        "output_dir": str(output_dir),
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
