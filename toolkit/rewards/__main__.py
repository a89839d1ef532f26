"""`python -m toolkit.rewards RECIPE --completion TEXT [--question-index N] [--split train|eval] [overrides ...]`

Scores one completion with each of the recipe's rewards and prints the scores and the weighted total: a way to
check a reward mix on hand-written answers before spending GPU time. The question's row (retrieved context,
gold answer, aliases) is built by the same code as training: load_recipe → load_dataset → build_index (the
index under the recipe's output_dir) → build_rows; the completion is passed the way TRL passes it (a
conversational completion, every row column as a keyword argument).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from toolkit.rewards.completions import extract_answer
from toolkit.rewards.registry import RewardError

MAX_TOKENS = 1_000_000  # far beyond any completion length a model is trained or evaluated with


def _parser() -> argparse.ArgumentParser:
    from toolkit.cli import Parser

    parser = Parser("python -m toolkit.rewards",
                    "Score one completion with each of a recipe's rewards, and the weighted total, against one "
                    "question of the recipe (its context retrieved as in training).")
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_overrides("dotted overrides, as for toolkit.run: rewards.0.weight=2")
    parser.add_argument("--completion", required=True, help="the completion to score ('-' reads it from stdin)")
    parser.add_argument("--question-index", type=int, default=0, help="which question of the split (from 0)")
    parser.add_argument("--split", choices=("train", "eval"), default="train", help="question set (default: train)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="completion length in tokens, for the length reward's overlong penalty "
                        "(default: unknown, no penalty)")
    return parser


def score_completion(recipe, completion: str, question_index: int, split: str, tokens: int | None = None):
    """(row, [(label, weight, score or None)]) for one completion against one question of the recipe."""
    if tokens is not None and not 0 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be from 0 to {MAX_TOKENS:,}, got {tokens}")
    # Imported here: they pull in chromadb and sentence-transformers (seconds); argument errors come first.
    from transformers.utils import logging as hf_logging

    from toolkit.data import load_dataset
    from toolkit.index import build_index
    from toolkit.prompts import build_rows

    hf_logging.disable_progress_bar()  # a weights-loading bar would bury a one-screen answer
    data = load_dataset(recipe.data)  # the question files plus questions generated from corpus rows
    # The same slices as a run: a question training never sees is out of range.
    if split == "train":
        questions = data.train[: recipe.data.max_train_questions]
    else:
        questions = data.eval[: recipe.eval.limit]
    if not 0 <= question_index < len(questions):
        raise ValueError(f"--question-index {question_index} is out of range: the {split} split has "
                         + (f"{len(questions)} questions (0–{len(questions) - 1})" if len(questions) != 1 else
                            "1 question (0)"))
    index, _ = build_index(recipe, data.documents)
    row = build_rows([questions[question_index]], index, recipe.prompt, recipe.retrieval.top_k)[0]
    columns = {key: [value] for key, value in row.items() if key != "prompt"}
    columns["prompts"] = [row["prompt"]]
    if tokens is not None:
        columns["completion_ids"] = [[0] * tokens]  # only the count matters to a reward
    completions = [[{"role": "assistant", "content": completion}]]
    scores = [(spec.key, spec.weight, spec.build()(completions, **columns)[0]) for spec in recipe.rewards]
    return row, scores


def _table(scores: list[tuple[str, float, float | None]]) -> Table:
    table = Table(title="rewards")
    for name, justify in (("reward", "left"), ("weight", "right"), ("score", "right"), ("weighted", "right")):
        table.add_column(name, justify=justify)
    total = 0.0
    for label, weight, value in scores:
        label = escape(label)  # a reward label is no markup: "len[/short]" raised MarkupError, "[v2]" vanished
        if value is None:  # "not applicable": TRL leaves it out of the sum, and so does this total
            table.add_row(label, f"{weight:g}", "n/a", "—")
        else:
            total += weight * value
            table.add_row(label, f"{weight:g}", f"{value:.3f}", f"{weight * value:.3f}")
    table.add_section()
    table.add_row("total", "", "", f"{total:.3f}", style="bold")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    # The reward sees a list of that many token ids: a bound keeps a typo from allocating gigabytes (or overflowing).
    if args.tokens is not None and not 0 <= args.tokens <= MAX_TOKENS:
        parser.error(f"--tokens must be >= 0, got {args.tokens}" if args.tokens < 0 else
                     f"--tokens must be at most {MAX_TOKENS:,}, got {args.tokens}")
    err_console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=err_console, show_path=False)],
                        format="%(message)s")
    from toolkit.recipe import load_recipe

    try:
        completion = sys.stdin.read() if args.completion == "-" else args.completion
        try:
            completion.encode("utf-8")
        except UnicodeEncodeError as err:  # bytes that are not UTF-8 arrive as lone surrogates; no model writes them
            raise ValueError(f"the completion is not valid UTF-8 text (a bad byte at character {err.start + 1})") \
                from None
        recipe = load_recipe(args.recipe, args.overrides)
        row, scores = score_completion(recipe, completion, args.question_index, args.split, args.tokens)
    except (ValueError, OSError, RewardError) as err:  # RecipeError, DataError, ModelError are ValueErrors
        err_console.print(f"[red]error:[/] {escape(' '.join(str(err).split()))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while indexing or loading a reward model: the usual exit status, no traceback
        err_console.print("interrupted")
        return 130
    console = Console()
    aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
    # The data's text is no markup: a question with "[/b]" in it raised MarkupError, "[v2]" vanished.
    console.print(f"[bold]question[/] {escape(row['question'])}", highlight=False)
    console.print(f"[bold]gold[/] {escape(row['answer'] + aliases)}", highlight=False)
    console.print(f"[bold]context[/] {escape(', '.join(row['context_ids']) or '(none)')}", highlight=False)
    console.print(f"[bold]extracted answer[/] {escape(repr(extract_answer(completion)))}", highlight=False)
    console.print(_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
