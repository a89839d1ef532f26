"""`python -m toolkit.evaluate RECIPE [--adapter DIR] [--limit N] [section.field=value ...]`: does GRPO beat plain
RAG, and does RAG beat no context?

Up to three columns answer the same eval questions with greedy decoding:
- `no_context`: the base model, same system prompt and worked examples, the question with an empty context;
- `base`: the base model with the retrieved context (plain RAG);
- `tuned`: the LoRA-tuned model with the same retrieved context.

`toolkit.run` calls the same functions (`evaluate_columns`, then `compare`) around training. Metrics and intervals
are defined in `toolkit.metrics`. Run on its own, the command writes `report.json`, `report.md` and
`predictions.jsonl` to `<output_dir>/evaluate/` (or `--out`, never a folder holding a training run's report or the
predictions it points to); without `--adapter` there is no tuned column.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from rich.markup import escape

from toolkit.generation import generate_sharing_prefix
from toolkit.loaders import corpus_taking
from toolkit.metrics import extracted, retrieval_hit, score_completions, summarize
from toolkit.models import ModelError
from toolkit.prompts import build_messages
from toolkit.recipe import Recipe, RecipeError
from toolkit.report import (
    EVAL_FILES,
    PREDICTIONS,
    cannot_write,
    comparison_table,
    in_the_way,
    plural,
    table_console,
    write_report,
)
from toolkit.verify import stop_ids

logger = logging.getLogger("toolkit.evaluate")  # not __name__: "__main__" under python -m

COLUMNS = {
    "no_context": "base model, question only (same system prompt and examples, empty context)",
    "base": "base model + retrieved context (plain RAG)",
    "tuned": "GRPO-tuned model + retrieved context",
}


def no_context_prompt(recipe: Recipe, row: dict) -> list[dict]:
    """The row's chat prompt with nothing retrieved: same system message and worked examples."""
    return build_messages(recipe.prompt, row["question"], [])


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int,
             share_prefix: bool = True):
    """Greedy completions for chat prompts; returns (texts, token counts, truncated flags). With `share_prefix`,
    the system message and worked examples every prompt starts with go through the model once per batch
    (toolkit.generation); the completions are the same."""
    import torch

    model.eval()
    texts, lengths, truncated = [], [], []
    # What generate stops on: the model's configured eos ids (a list for Llama-3) as well as the tokenizer's; a
    # reply that ends on any of them was not cut at the limit, and the stop token is not part of its length.
    eos = stop_ids(model.generation_config, tokenizer) | {tokenizer.pad_token_id}
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                    pad_token_id=tokenizer.pad_token_id)
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer.apply_chat_template(
            prompts[start : start + batch_size], add_generation_prompt=True, tokenize=True, padding=True,
            return_tensors="pt", return_dict=True,
        ).to(model.device)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            out = (generate_sharing_prefix(model, ids, mask, **settings) if share_prefix
                   else model.generate(input_ids=ids, attention_mask=mask, **settings))
        for row in out[:, ids.shape[1] :].tolist():
            ended = next((i for i, tok in enumerate(row) if tok in eos), None)
            lengths.append(ended if ended is not None else len(row))
            truncated.append(ended is None)
            texts.append(tokenizer.decode(row[: lengths[-1]], skip_special_tokens=True))
    return texts, lengths, truncated


def evaluate_column(recipe: Recipe, model, tokenizer, rows: list[dict], label: str,
                    share_prefix: bool = True, rewards: list | None = None) -> list[dict]:
    """One column's per-question results: `{"completion", "answer", "scores"}` (scores: metric → value).
    `rewards`: the recipe's built rewards (`Recipe.build_rewards`; default: built for this column)."""
    if label not in COLUMNS:
        raise ValueError(f"unknown eval column {label!r}; known: {', '.join(COLUMNS)}")
    with_context = label != "no_context"
    logger.info("evaluating %s on %s", label, plural(len(rows), "question"))
    prompts = [row["prompt"] if with_context else no_context_prompt(recipe, row) for row in rows]
    texts, lengths, truncated = generate(model, tokenizer, prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size,
                                         share_prefix)
    # A reply the chat template opened (R1's "<think>\n") is scored, and shown, whole.
    texts = [row.get("completion_prefix", "") + text for row, text in zip(rows, texts, strict=True)]
    results = []
    for row, text, scores, n_tokens, cut in zip(
        rows, texts, score_completions(recipe, rows, texts, prompts, rewards), lengths, truncated, strict=True
    ):
        headline = {key: scores.pop(key) for key in ("answer_match", "token_f1", "context_grounding", "format")}
        hit = retrieval_hit(row) if with_context else None
        headline |= {"completion_tokens": n_tokens, "truncated": cut, "retrieval_recall": hit}
        results.append({"completion": text, "answer": extracted(text), "scores": headline | scores})
    return results


def evaluate_columns(recipe: Recipe, model, tokenizer, rows: list[dict], labels,
                     share_prefix: bool = True, rewards: list | None = None) -> dict[str, list[dict]]:
    rewards = recipe.build_rewards() if rewards is None else rewards  # one reward model load for every column
    return {label: evaluate_column(recipe, model, tokenizer, rows, label, share_prefix, rewards) for label in labels}


def compare(recipe: Recipe, rows: list[dict], results: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """Report sections (`eval`, one metric → mean dict per column, `intervals`, `differences`) and the
    per-question predictions, from `evaluate_columns` results on `rows`."""
    labels = [label for label in COLUMNS if label in results]
    summary = summarize({label: [r["scores"] for r in results[label]] for label in labels})
    section = {
        "eval": {
            "questions": len(rows),
            "top_k": recipe.retrieval.top_k,
            "max_new_tokens": recipe.eval.max_new_tokens,
            "columns": {label: COLUMNS[label] for label in labels},
            "bootstrap": summary["bootstrap"],
            "predictions": PREDICTIONS,
        },
        **summary["means"],
        "intervals": summary["intervals"],
        "differences": summary["differences"],
    }
    predictions = [
        {
            "question": row["question"],
            "gold": row["answer"],
            "aliases": row["aliases"],
            "source": row.get("source"),
            "context_sources": row.get("context_sources", []),
            **{label: results[label][i] for label in labels},
        }
        for i, row in enumerate(rows)
    ]
    return section, predictions


def evaluate_recipe(recipe: Recipe, dataset, adapter: Path | None, out: Path) -> dict:
    """The standalone evaluation: index, prompts, no-context and base columns, then the adapter's column."""
    from toolkit.index import build_index
    from toolkit.models import load_model, resolve_model
    from toolkit.prompts import build_rows, prepare_replies, warn_over_context

    index, counts = build_index(recipe, dataset.documents)
    rows = build_rows(dataset.eval[: recipe.eval.limit], index, recipe.prompt, recipe.retrieval.top_k)
    rewards = recipe.build_rewards(load=True)  # a reward model that cannot load fails before the minutes below
    model_path = resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)
    model, tokenizer = load_model(model_path, recipe.model.dtype)
    tuned = None
    if adapter is not None:
        from toolkit.models import load_adapter

        # Loaded before the base columns, which take minutes: an adapter made for another base model fails now.
        tuned = load_adapter(model, adapter)
    prepare_replies(tokenizer, rows, recipe.prompt)
    warn_over_context(tokenizer, rows, recipe.eval.max_new_tokens,
                      getattr(model.config, "max_position_embeddings", None), "eval prompts + eval.max_new_tokens")
    # The adapter wrapped the base model in place; peft's disable_adapter runs the base layers alone.
    with tuned.disable_adapter() if tuned is not None else contextlib.nullcontext():
        results = evaluate_columns(recipe, tuned or model, tokenizer, rows, ("no_context", "base"), rewards=rewards)
    if tuned is not None:
        results |= evaluate_columns(recipe, tuned, tokenizer, rows, ("tuned",), rewards=rewards)
    section, predictions = compare(recipe, rows, results)
    section["eval"]["predictions"] = "predictions.jsonl"  # next to this report
    report = {
        "recipe": recipe.model_dump(mode="json"),
        "model_path": model_path,
        "adapter": None if adapter is None else str(adapter),
        "index": {"documents": len(dataset.documents), **vars(counts)},
        **section,
    }
    write_report(out, report, predictions)
    return report


def run_outputs(out: Path) -> str | None:
    """Why `out` must not take this command's report: it holds a training run's (report.json with a training
    section), or it is a run's eval/ folder, whose predictions.jsonl the run's report points to. Either would be
    replaced without a word, and the run's report would then describe answers it never gave. No hint: each caller
    adds the one that fits it."""
    real = out.resolve()  # a link to a run's eval/, or `--out .` inside it: its parent is the run
    for report, what in ((real / "report.json", f"{out} holds a training run's report"),
                         (real.parent / "report.json", f"{out} holds the predictions of the run in {real.parent}")):
        try:
            found = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(found, dict) or "training" not in found:
            continue
        predictions = (found.get("eval") or {}).get("predictions", PREDICTIONS)
        if report.parent == real or (isinstance(predictions, str)
                                     and (report.parent / predictions).resolve().parent == real):
            return f"{what}, which this evaluation would replace"
    return None


def _out_folder(value: str) -> Path:
    """argparse `type=` for --out: a folder that can be written, checked before the evaluation."""
    from toolkit.cli import folder_arg

    path = folder_arg(value)
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(f"{path} is a link to {os.readlink(path)}, which does not exist")
    reason = cannot_write(path) or in_the_way(path, files=EVAL_FILES)
    if reason is None and (reason := run_outputs(path)) is not None:
        reason += "; pass another --out"
    if reason is not None:
        raise argparse.ArgumentTypeError(reason)
    return path


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import ERRORS, Parser, fail, folder_arg, load_with_overrides, setup_logging
    from toolkit.models import check_adapter, run_adapter_hint
    from toolkit.run_record import warn_if_asked_otherwise

    parser = Parser("python -m toolkit.evaluate", __doc__)
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_overrides("dotted overrides: eval.max_new_tokens=32 output_dir=/tmp/x")
    parser.add_argument("--adapter", type=folder_arg,
                        help="a LoRA adapter folder (e.g. runs/wine/adapter): adds `tuned`")
    parser.add_argument("--limit", type=int, help="evaluate only the first N eval questions (eval.limit)")
    parser.add_argument("--out", type=_out_folder,
                        help="where to write the report (default: <output_dir>/evaluate; never a run's own files)")
    args = parser.parse_intermixed_args(argv)
    console = setup_logging()
    overrides = [*args.overrides, *([f"eval.limit={args.limit}"] if args.limit is not None else [])]
    try:
        recipe, dataset = load_with_overrides(args.recipe, overrides)
        if args.adapter is not None:
            if not (args.adapter / "adapter_config.json").is_file():
                hint = run_adapter_hint(args.adapter)
                raise ModelError(f"{args.adapter}: not a LoRA adapter folder (no adapter_config.json)"
                                 + (f"; {hint}" if hint else ""))
            check_adapter(args.adapter)  # a broken one fails now, not after the base model's columns
            warn_if_asked_otherwise(recipe, args.adapter, "evaluate")
        # Not the run's eval/: that holds the predictions its report points to.
        out = args.out or recipe.output_dir / "evaluate"
        blocked = None if args.out else in_the_way(out, files=EVAL_FILES) or run_outputs(out)
        if blocked:  # --out was checked as it was parsed
            raise RecipeError(f"output_dir: {blocked}; move it away or pass --out DIR")
        corpus = corpus_taking(recipe.data.corpus, out, ("report.md", "predictions.jsonl"))
        if corpus is not None:  # the next command would index this report as documents
            raise RecipeError(f"{'--out' if args.out else 'output_dir'}: {out} is inside the corpus entry {corpus} "
                              "(data.corpus), which would read report.md and predictions.jsonl as documents; "
                              f"{'pass another --out' if args.out else 'pass --out DIR outside it'}")
        report = evaluate_recipe(recipe, dataset, args.adapter, out)
    except ERRORS as err:
        return fail(console, err)
    except KeyboardInterrupt:  # the usual exit status for Ctrl-C, not a traceback; the report is written last
        console.print("interrupted: no report written", highlight=False)
        return 130
    table_console().print(comparison_table(report))
    console.print(f"outputs in [bold]{escape(str(out))}[/]: report.json, report.md, predictions.jsonl", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
