"""`python -m toolkit.run RECIPE [section.field=value ...]`: index, prompts, base eval, GRPO, tuned eval, report.

One builder per stage, called in order; each stage lives in its own module.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from toolkit.data import DataError, load_documents, load_qa
from toolkit.models import ModelError
from toolkit.recipe import Recipe, RecipeError, load_recipe
from toolkit.report import comparison_table, save_dir_atomic, write_report

logger = logging.getLogger("toolkit")


def run(recipe: Recipe, console: Console) -> dict:
    # Imported here, not at the top: they pull in torch, transformers and TRL (seconds), and a recipe error
    # should be reported at once.
    from toolkit.evaluate import evaluate
    from toolkit.index import build_index
    from toolkit.models import load_model, resolve_model
    from toolkit.prompts import build_rows
    from toolkit.train import train

    out = recipe.output_dir
    docs = load_documents(recipe.data.corpus)
    train_qa = load_qa(recipe.data.train)[: recipe.data.max_train_questions]
    eval_qa = load_qa(recipe.data.eval)[: recipe.eval.limit]

    index, counts = build_index(recipe, docs)
    train_rows = build_rows(train_qa, index, recipe.prompt, recipe.retrieval.top_k)
    eval_rows = build_rows(eval_qa, index, recipe.prompt, recipe.retrieval.top_k)

    model_path = resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)
    model, tokenizer = load_model(model_path, recipe.model.dtype)
    base = evaluate(recipe, model, tokenizer, eval_rows, "base")

    trainer, trained = train(recipe, model, tokenizer, train_rows, out / "trainer")
    tuned = evaluate(recipe, trainer.model, tokenizer, eval_rows, "tuned")

    save_dir_atomic(out / "adapter", trainer.model.save_pretrained)
    report = {
        "recipe": recipe.model_dump(mode="json"),
        "model_path": model_path,
        "index": {"documents": len(docs), **vars(counts)},
        "eval": {"questions": len(eval_rows)},
        "base": base.metrics,
        "tuned": tuned.metrics,
        "training": {
            "steps": trained.steps,
            "wall_seconds": trained.seconds,
            "train_questions": len(train_rows),
            "final_log": trained.final_log,
            "log_history": trained.log_history,
        },
    }
    predictions = [
        {"question": b["question"], "gold": b["gold"], "base": _strip(b), "tuned": _strip(t)}
        for b, t in zip(base.predictions, tuned.predictions, strict=True)
    ]
    write_report(out, report, predictions)
    console.print(comparison_table(base.metrics, tuned.metrics, len(eval_rows)))
    console.print(f"outputs in [bold]{out}[/]: adapter/, report.json, report.md, predictions.jsonl")
    return report


def _strip(prediction: dict) -> dict:
    return {k: v for k, v in prediction.items() if k not in ("question", "gold")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: training.max_steps=2 output_dir=/tmp/x")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    handler = RichHandler(console=console, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logger.setLevel(logging.INFO)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run(recipe, Console())
    except (RecipeError, DataError, ModelError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
