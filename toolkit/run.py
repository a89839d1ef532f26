"""`python -m toolkit.run RECIPE [--resume] [section.field=value ...]`: index, base evals, GRPO, tuned eval, report.

One builder per stage, called in order; each stage lives in its own module.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from toolkit.checkpoints import (
    STATE,
    CheckpointError,
    base_results,
    check_same_base,
    check_same_lora,
    check_same_optimizer,
    eval_key,
    latest_checkpoint,
    resume_checkpoint,
    start_fresh,
)
from toolkit.cli import ERRORS, Parser, fail, setup_logging
from toolkit.loaders import corpus_taking
from toolkit.recipe import Recipe, RecipeError, load_recipe
from toolkit.report import (
    PREDICTIONS,
    comparison_table,
    in_the_way,
    remove_whole,
    save_dir_atomic,
    table_console,
    write_report,
)

logger = logging.getLogger("toolkit.run")  # not __main__ under python -m: the toolkit logger shows


# A finished run's outputs under its output folder (export/ is toolkit.export's, the index is kept).
RUN_OUTPUTS = ("adapter", "report.json", "report.md", PREDICTIONS, "plots")


def remove_earlier_outputs(out: Path) -> None:
    """A new run (not --resume) replaces the earlier run's outputs when it ends. Removed when its training starts,
    so that a run stopped on the way leaves none of them behind: chat, evaluate and export would take the earlier
    run's adapter for this one's. A folder is renamed away first, so one that cannot be removed whole is never
    left half removed (an adapter_config.json without its weights); a linked folder keeps its link, and only the
    files this run writes there go."""
    removed = []
    for name in RUN_OUTPUTS:
        path = out / name
        try:
            if name == "plots" and path.is_dir():
                pngs = sorted(path.glob("*.png"))
                for png in pngs:
                    png.unlink()
                if not pngs:
                    continue
            elif path.is_dir() and not path.is_symlink():
                remove_whole(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
        except OSError as err:
            raise RecipeError(f"output_dir: cannot remove the earlier run's {path} ({err.strerror or err}); move it "
                              "away or set another output_dir") from None
        removed.append(name + ("/" if name in ("adapter", "plots") else ""))
    if removed:
        logger.info("removed the earlier run's %s from %s (this run replaces them)", ", ".join(removed), out)


def run(recipe: Recipe, console: Console, resume: bool = False) -> dict:
    """The whole run. `resume`: continue training from the latest checkpoint in <output_dir>/trainer (checked
    first, so a missing one fails before anything loads) and reuse the base columns the interrupted run evaluated,
    when nothing they depend on changed; the report then covers the whole run, every training step once."""
    from toolkit.backends import select_backend

    # First, before anything imports transformers or TRL: the unsloth backend has to patch them as they load.
    backend = select_backend(recipe.model.backend)
    # Imported here, not at the top: they pull in torch, transformers and TRL (seconds), and a recipe error
    # should be reported at once.
    from toolkit.curves import render_plots, training_curves, training_warnings
    from toolkit.evaluate import compare, evaluate_columns
    from toolkit.memory import preflight
    from toolkit.metrics import retrieval_metrics
    from toolkit.models import PACKAGED_PREFIX, resolve_model
    from toolkit.prompts import build_splits, prepare_replies, warn_over_context
    from toolkit.train import (
        check_enough_questions,
        check_lora_targets,
        check_trainer_settings,
        grpo_config,
        linear_layers,
        optimizer_settings,
        train,
    )

    out = recipe.output_dir
    blocked = in_the_way(out, files=("report.json", "report.md", PREDICTIONS), folders=("plots", "trainer"),
                         whole=("adapter",))
    if blocked:  # found now, not when the report is written after training
        raise RecipeError(f"output_dir: {blocked}; move it away or set another output_dir")
    corpus = corpus_taking(recipe.data.corpus, out, ("report.md", PREDICTIONS, "adapter/README.md"))
    if corpus is not None:  # the next run, evaluate or chat would index this run's outputs as documents
        raise RecipeError(f"output_dir: {out} is inside the corpus entry {corpus} (data.corpus), which would read "
                          "the run's report.md and eval/predictions.jsonl as documents; set an output_dir outside it")
    if recipe.export.formats:
        from toolkit.export import check_export_ready, check_outputs

        check_export_ready(recipe.export.formats, recipe.export.verify)  # a missing extra fails now, not after training
        check_outputs(out / "export", recipe.export.formats)  # and so does an output in the way
    work = out / "trainer"
    checkpoint = resume_checkpoint(work, recipe.training.max_steps) if resume else None
    config = grpo_config(recipe, work, backend)  # resolved now: a checkpoint it does not fit fails before any load
    if checkpoint is not None:
        check_same_lora(checkpoint, recipe.training.lora)
        check_same_optimizer(checkpoint, optimizer_settings(config))
    splits = build_splits(recipe)  # data, index sync, retrieval: one prompt row per train and eval question
    train_rows, eval_rows = splits.train, splits.eval
    check_enough_questions(config, len(train_rows))  # before minutes of loading and the base evaluation

    # One set for evaluation and training, so a reward model loads once; loaded now, before the policy model.
    rewards = recipe.build_rewards(load=True)
    model_path = resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)
    if checkpoint is not None:
        check_same_base(checkpoint, model_path, recipe.model.name_or_path.startswith(PACKAGED_PREFIX))
    preflight(recipe, model_path, train_rows + eval_rows, backend.name)  # CUDA only: refuse what cannot fit
    model, tokenizer = backend.load(recipe, model_path)
    check_lora_targets(recipe, model)  # before the base evaluation: peft would find a typo only after it
    check_trainer_settings(config, model)  # and a missing optimizer package (adamw_8bit without bitsandbytes)
    if checkpoint is not None and not isinstance(recipe.training.lora.target_modules, list):
        check_same_lora(checkpoint, recipe.training.lora, linear_layers(model))  # "all-linear", now resolvable
    share = backend.shares_prompt_prefill  # evaluation reads the prompts' common prefix once (toolkit.generation)
    prepare_replies(tokenizer, train_rows + eval_rows, recipe.prompt)  # R1's template or open_think: <think>
    limit = backend.context_length(recipe, model)
    warn_over_context(tokenizer, train_rows, recipe.training.max_completion_length, limit,
                      "training prompts + training.max_completion_length")
    warn_over_context(tokenizer, eval_rows, recipe.eval.max_new_tokens, limit, "eval prompts + eval.max_new_tokens")
    results = base_results(work, eval_key(recipe, model_path, eval_rows, backend.name), resume,
                           lambda: evaluate_columns(recipe, backend.for_inference(model, tokenizer), tokenizer,
                                                    eval_rows, ("no_context", "base"), share, rewards))

    if not resume:
        start_fresh(work)  # only now: bad data, a refused preflight or a failed load leaves the old checkpoints
        remove_earlier_outputs(out)  # and the earlier run's adapter and report, which this run replaces
    trainer, trained = train(recipe, model, tokenizer, train_rows, work, resume_from=checkpoint, backend=backend,
                             rewards=rewards, config=config)
    tuned = backend.for_inference(trainer.model, tokenizer)
    results |= evaluate_columns(recipe, tuned, tokenizer, eval_rows, ("tuned",), share, rewards)

    save_adapter(out / "adapter", backend, trainer.model)
    evaluation, predictions = compare(recipe, eval_rows, results)
    curves = training_curves(trained.log_history)
    images = render_plots(curves)
    report = {
        "recipe": recipe.model_dump(mode="json"),
        "model_path": model_path,
        "backend": backend.describe(),  # which backend trained and why (auto picks unsloth only on CUDA)
        "index": {"documents": len(splits.dataset.documents), **vars(splits.counts)},
        # recall@k and MRR of the eval questions' gold sources
        "retrieval": retrieval_metrics(splits.index, splits.eval_qa, recipe.retrieval.top_k),
        **evaluation,  # eval, no_context, base, tuned (metric → mean), intervals, differences
        "warnings": training_warnings(curves),
        "training": {
            "steps": trained.steps,
            "wall_seconds": trained.seconds,
            "resumed_from_step": trained.resumed_from,  # the checkpoint's step on --resume: wall_seconds timed the rest
            "train_questions": len(train_rows),
            "final_log": trained.final_log,
            "log_history": trained.log_history,
            "curves": curves,
            "plots": list(images),
        },
    }
    write_report(out, report, predictions, images)
    console.print(comparison_table(report))
    shown = escape(str(out))  # a folder name may hold "[", which rich would read as markup
    console.print(f"outputs in [bold]{shown}[/]: adapter/, report.json, report.md, eval/predictions.jsonl, plots/")
    if recipe.export.formats:
        export_run(recipe, console)
    return report


def save_adapter(path: Path, backend, model) -> None:
    """The trained adapter at `path`, whole or not at all; a full disk is one line naming it, not a traceback
    (safetensors reports one as its own SafetensorError, not an OSError)."""
    try:
        save_dir_atomic(path, lambda tmp: backend.save_adapter(model, tmp))
    except Exception as err:
        from toolkit.models import write_failure

        reason = write_failure(err)
        if not reason:
            raise
        raise RecipeError(f"output_dir: cannot write the adapter {path}: {reason}") from None


def export_run(recipe: Recipe, console: Console) -> dict:
    """export.formats after the report: the manifest, or ExportError (a non-zero exit, as `python -m
    toolkit.export` gives) when the exact GGUF does not reproduce the merged model; the report stays written."""
    from toolkit.export import export  # imported here: llama-cpp-python is an optional extra
    from toolkit.verify import ExportError

    manifest = export(recipe)
    out = recipe.output_dir / "export"
    if not manifest["ok"]:
        raise ExportError(f"{manifest['exact_format']} does not reproduce the merged model's greedy tokens "
                          f"(see {out / 'manifest.json'})")
    verdict = "verified" if recipe.export.verify else "not verified: export.verify is off"
    console.print(f"export in [bold]{escape(str(out))}[/]: {', '.join(manifest['formats'])} ({verdict})",
                  soft_wrap=True)  # a long path stays one line, as the error's does
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = Parser("python -m toolkit.run", __doc__)
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in <output_dir>/trainer (see training.save_steps)")
    parser.add_overrides("dotted overrides: training.max_steps=2 output_dir=/tmp/x")
    args = parser.parse_intermixed_args(argv)  # --resume may come before, between or after the overrides
    console = setup_logging()
    recipe, started = None, time.time()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run(recipe, table_console(), resume=args.resume)
    except (*ERRORS, CheckpointError) as err:
        return fail(console, err)
    except KeyboardInterrupt:  # the usual exit status for Ctrl-C, and where to pick up, not a traceback
        latest = latest_checkpoint(recipe.output_dir / "trainer") if recipe else None
        if latest and not args.resume and (latest / STATE).stat().st_mtime < started:
            # A run without --resume removes an earlier run's checkpoints only when its training starts: one
            # stopped before that would send --resume into the earlier run, whatever this recipe says.
            hint = (f"no checkpoint of this run yet ({escape(str(latest))} is an earlier run's, removed when this "
                    "run's training starts)")
        elif latest:
            hint = f"--resume continues from {escape(str(latest))}, the latest checkpoint there"
        else:
            hint = "no checkpoint to --resume from (training.save_steps sets how often one is written)"
        console.print(f"interrupted: {hint}", highlight=False, soft_wrap=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
