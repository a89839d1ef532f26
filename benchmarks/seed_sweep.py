"""Seed spread: how much of a recipe's tuned answer-match is the recipe and how much the training seed? One JSON line.

    .venv/bin/python benchmarks/seed_sweep.py --seeds 42 1 2                     # ~8 min a seed on 2 CPU cores
    .venv/bin/python benchmarks/seed_sweep.py --seeds 42 1 2 3 4 5 6 --parallel 14 \
        --variant training.scale_rewards=none                                   # a GPU box: ~3.5 min for all 14
    .venv/bin/python benchmarks/seed_sweep.py --seeds 1 2 --variant training.beta=0.04 \
        --variant training.lora.r=8 training.lora.alpha=16                      # two variants, one recipe arm
    .venv/bin/python benchmarks/seed_sweep.py training.max_steps=1 eval.limit=4 --seeds 1 2   # a smoke test

Recipe overrides shared by every arm come first: `--seeds` and `--variant` take every value after them, and each
`--variant` makes one more arm.

Why: one GRPO run of the 135M model is a noisy measurement. Sampling, the LoRA init and the question order all
follow `training.seed`, and on the wine recipe the tuned answer-match of seven seeds spread from 0.12 to 0.32
(sd 0.08), more than most recipe changes move it. Compare recipe variants on the mean of several seeds, paired.

What runs: arms are `recipe` (the recipe plus the shared overrides) and, per `--variant`, `variant`, `variant2`, ...
(plus that variant's overrides), all on the same seeds: several variants share one recipe arm. Each arm's prompts
(retrieval included: a variant may change it) are built once into `<output-dir>/rows-<arm>.json`, or read from such
files in the folder `--rows` names, so a GPU box needs no embedder or index (a rows file records the data,
retrieval and prompt settings it was built from, and one that differs from its arm's is refused). Each (arm, seed)
then trains in its own interpreter, `--parallel` at a time, as `make run` trains (`toolkit.train.train`), and
scores a greedy tuned evaluation on the eval split; one more worker per arm scores the base model (it does not
depend on the seed; a variant of `training.*` fields alone whose prompts come out the same shares the recipe's).

On CUDA a worker trains the `hf` backend in fp32 with bf16 autocast off, so that it runs the CPU recipe's
arithmetic on the GPU (sampling still differs from a CPU run's, so a seed's figures do too; the spread carries
over). On an H100, 10 seeds of two arms (22 workers, `--parallel 22`) took 5 min, and a second sweep
repeated the recipe arm's figures seed for seed.

Each worker leaves `<label>-predictions.json` in the output folder: every eval question's gold answer, completion
and answer-match, to read what a variant changed, not only by how much.

JSON: per arm, its `base` (answer_match, format), each seed's answer_match / format / truncated, their mean and
sd, and `gain_mean` (mean tuned − base); a variant arm also gives its `overrides`, the paired differences
(`paired`: variant − recipe, per seed, their mean and 95 % t-interval) and `ratio` = variant mean / recipe mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from toolkit.cli import ERRORS, Parser, fail

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("answer_match", "format", "truncated")
def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with `df` degrees of freedom (seeds − 1); the normal 1.96 would
    make the interval of a 16-seed sweep 8 % too narrow (2.131)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


OVERRIDES_FIRST = "overrides for every arm go before --seeds and --variant, which take every value after them"


def seed_value(value: str) -> int:
    """argparse `type=` for --seeds: a whole number; an override there (`--seeds 1 training.max_steps=2`) is told
    where it goes, rather than "invalid int value"."""
    try:
        return int(value)
    except ValueError:
        if "=" in value:
            raise argparse.ArgumentTypeError(f"{value} is a recipe override, not a seed: {OVERRIDES_FIRST}") from None
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(f"python benchmarks/{Path(__file__).name}", __doc__)
    parser.add_overrides("recipe overrides for every arm, e.g. training.max_steps=5; they go before --seeds and "
                         "--variant, which take every value after them (paths in them are read from the project "
                         "root, where the script runs)")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "wine.yaml"))
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[42, 1, 2], metavar="SEED",
                        help="training.seed of each run of every arm (default: 42 1 2)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides of one more arm, trained on the same seeds (repeat for several arms); "
                        "every value up to the next option is this arm's")
    parser.add_argument("--parallel", type=int, default=1, help="workers at a time (CPU: 1 per 2 cores)")
    parser.add_argument("--rows", type=Path, help="a folder with the rows-<arm>.json of an earlier sweep")
    parser.add_argument("--output-dir", type=Path, help="default: a new folder under runs/bench/")
    parser.add_argument("--worker", nargs=3, metavar=("ROWS", "LABEL", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    repeated = next((seed for i, seed in enumerate(args.seeds) if seed in args.seeds[:i]), None)
    if repeated is not None:  # both runs would share one folder and one per-seed entry, and count twice in the t
        parser.error(f"--seeds: seed {repeated} given twice")
    if not args.worker:  # paths given on the command line are the caller's; the recipe's own are the project's
        args.recipe = str(Path(args.recipe).resolve())
        args.rows = args.rows and args.rows.resolve()
        args.output_dir = args.output_dir and args.output_dir.resolve()
    os.chdir(ROOT)  # recipe paths are relative to the project root
    if args.worker:
        return worker(args.recipe, *args.worker, args.overrides)

    variants = variant_arms(args.variant)
    arms = {"recipe": args.overrides} | {arm: [*args.overrides, *over] for arm, over in variants.items()}
    console = Console(stderr=True)
    try:  # every arm's recipe, as each of its workers will load it, before anything is built or written
        check_arms(args.recipe, arms, args.seeds, args.output_dir or ROOT / "runs" / "bench" / "seeds")
    except ERRORS as err:
        return fail(console, err)
    missing = [f"rows-{arm}.json" for arm in arms if args.rows and not (args.rows / f"rows-{arm}.json").is_file()]
    if missing:
        parser.error(f"--rows {args.rows}: no {', '.join(missing)} there (an earlier sweep's --output-dir holds them)")
    for arm, over in arms.items() if args.rows else ():
        try:
            field = stale_rows(args.rows / f"rows-{arm}.json", over, args.recipe)
        except ERRORS as err:
            return fail(console, err)
        if field:
            parser.error(f"--rows {args.rows}: rows-{arm}.json was built with another {field} than arm {arm!r} "
                         "sets (drop --rows to build its prompts)")
    if args.output_dir is None:
        (ROOT / "runs" / "bench").mkdir(parents=True, exist_ok=True)
        args.output_dir = Path(tempfile.mkdtemp(prefix="seeds-", dir=ROOT / "runs" / "bench"))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        convert_model_once(args.recipe, args.overrides, out)
        # Per arm: a variant may change retrieval or the prompt, and then its prompts (and its base score) differ.
        rows = {arm: (args.rows / f"rows-{arm}.json") if args.rows else build_rows(args.recipe, over, out, arm)
                for arm, over in arms.items()}
    except ERRORS as err:  # data or the embedder missing: one line (what has been built stays in `out`)
        return fail(console, err)
    jobs = [(arm, f"base-{arm}", over) for arm, over in arms.items()
            if arm == "recipe" or not shares_base(variants[arm], rows, arm)]
    jobs += [(arm, f"tuned-{arm}-s{seed}", [*over, f"training.seed={seed}"])
             for seed in args.seeds for arm, over in arms.items()]
    start = time.perf_counter()
    results = run_jobs(args.recipe, rows, jobs, args.parallel, out)
    print(json.dumps(summary(results, args, time.perf_counter() - start, out)), flush=True)
    return 0


def worker_overrides(overrides: list[str], out: Path) -> list[str]:
    """What a worker adds to its arm's overrides (and its seed's): on CUDA also training.trl.bf16=false."""
    return [*overrides, f"output_dir={out}", "model.backend=hf"]


def check_arms(recipe_path: str, arms: dict[str, list[str]], seeds: list[int], out: Path) -> None:
    """RecipeError (or another of toolkit.cli's ERRORS) for the first arm or seed whose recipe does not load as its
    workers will load it: a mistyped override in the last variant (or an --output-dir that is a file) is refused
    before the first arm's index and prompts are built."""
    from toolkit.recipe import load_recipe

    for arm, over in arms.items():
        for value in seeds:
            load_recipe(recipe_path, worker_overrides([*over, f"training.seed={value}"], out / f"tuned-{arm}-s{value}"))


def variant_arms(variants: list[list[str]]) -> dict[str, list[str]]:
    """Arm name → its own overrides, one arm per `--variant`: `variant`, then `variant2`, `variant3`, ..."""
    return {("variant" if i == 1 else f"variant{i}"): over for i, over in enumerate(variants, 1)}


def shares_base(variant: list[str], rows: dict[str, Path], arm: str = "variant") -> bool:
    """Whether the variant's base score is the recipe's, so one base worker serves both arms: it changes only
    training settings, which an untrained model never reads, and its prompts came out the same."""
    return (all(o.split("=", 1)[0].startswith("training.") for o in variant)
            and rows[arm].read_bytes() == rows["recipe"].read_bytes())


def build_rows(recipe_path: str, overrides: list[str], out: Path, arm: str) -> Path:
    from toolkit.prompts import build_splits
    from toolkit.recipe import load_recipe

    recipe = load_recipe(recipe_path, [*overrides, f"output_dir={out / f'index-{arm}'}"])
    splits = build_splits(recipe)
    rows = {"train": splits.train, "eval": splits.eval, "built_from": prompt_settings(recipe)}
    path = out / f"rows-{arm}.json"
    path.write_text(json.dumps(rows))
    return path


def prompt_settings(recipe) -> dict:
    """The recipe sections a rows file's prompts are built from: its data, retrieval and prompt."""
    return recipe.model_dump(mode="json", include={"data", "retrieval", "prompt"})


def stale_rows(path: Path, overrides: list[str], recipe_path: str) -> str | None:
    """The first field (dotted, e.g. `prompt.system`) whose value in the arm's recipe differs from the one the
    rows file was built with, or None: reused prompts would otherwise silently drop a variant's prompt or
    retrieval change."""
    from toolkit.data import DataError
    from toolkit.recipe import load_recipe

    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # a damaged or hand-edited file: a traceback before
        raise DataError(f"--rows: {path} is unreadable ({(str(err) or type(err).__name__).splitlines()[0]})") \
            from None
    if not isinstance(found, dict):
        raise DataError(f"--rows: {path} is not a rows file (a JSON object), got {type(found).__name__}")
    built = found.get("built_from")
    if built is None:
        return "recipe (the file does not record which: an older seed_sweep wrote it)"
    return first_difference(built, prompt_settings(load_recipe(recipe_path, overrides)))


def first_difference(a, b, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}.{i}")
            if found:
                return found
        return None
    return None if a == b else where


def convert_model_once(recipe_path: str, overrides: list[str], out: Path) -> None:
    """A packaged model is converted on first use; here, before the workers would all race to do it."""
    from toolkit.models import resolve_model
    from toolkit.recipe import load_recipe

    recipe = load_recipe(recipe_path, [*overrides, f"output_dir={out}"])
    resolve_model(recipe.model.name_or_path, recipe.model.cache_dir)


def run_jobs(recipe: str, rows: dict[str, Path], jobs: list, parallel: int, out: Path) -> list[dict]:
    """Each job in a fresh interpreter (a trained process's RNG, caches and patches never leak into the next)."""
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // parallel))}
    pending, running, results = list(jobs), [], []
    try:
        _run(recipe, rows, pending, running, results, parallel, out, env)
    finally:
        for *_, proc in running:  # a failed worker or Ctrl-C: the others stop too
            proc.kill()
    return results


def _run(recipe, rows, pending, running, results, parallel, out, env) -> None:
    while pending or running:
        while pending and len(running) < parallel:
            arm, label, over = pending.pop(0)
            result, log = out / f"{label}.json", out / f"{label}.log"
            cmd = [sys.executable, __file__, *over, "--recipe", recipe, "--worker", str(rows[arm]), label, str(result)]
            with open(log, "w") as handle:
                running.append((arm, label, result, log, subprocess.Popen(cmd, stdout=handle, stderr=handle, env=env)))
        time.sleep(1)
        for job in [j for j in running if j[4].poll() is not None]:
            running.remove(job)
            arm, label, result, log, proc = job
            if proc.returncode != 0:
                tail = log.read_text()[-2000:]
                raise SystemExit(f"worker {label} failed (exit {proc.returncode}); its log {log} ends:\n{tail}")
            results.append({"arm": arm, "label": label, **json.loads(result.read_text())})


def read_rows(rows_path: str, recipe, tokenizer) -> tuple[list[dict], list[dict]]:
    """The train and eval rows `build_rows` wrote, with the reply prefix put in as `toolkit.run` does: a model
    whose chat template opens the reply (R1's "<think>", or `prompt.open_think`) would otherwise score 0 on every
    format reward."""
    from toolkit.prompts import prepare_replies

    rows = json.loads(Path(rows_path).read_text())
    train_rows, eval_rows = rows["train"], rows["eval"][: recipe.eval.limit]
    prepare_replies(tokenizer, train_rows + eval_rows, recipe.prompt)
    return train_rows, eval_rows


def worker(recipe_path: str, rows_path: str, label: str, result: str, overrides: list[str]) -> int:
    import logging

    import torch

    from toolkit.evaluate import evaluate_columns
    from toolkit.metrics import column_means
    from toolkit.models import load_model, resolve_model
    from toolkit.recipe import load_recipe
    from toolkit.train import train

    logging.basicConfig(level=logging.WARNING)
    out = Path(result).with_suffix("")
    # toolkit.train turns bf16 autocast on wherever the GPU has it; off (GRPOConfig's bf16, through the recipe's
    # training.trl), the GPU runs the CPU recipe's fp32.
    fp32 = ["training.trl.bf16=false"] if torch.cuda.is_available() else []
    recipe = load_recipe(recipe_path, worker_overrides([*overrides, *fp32], out))
    model, tokenizer = load_model(resolve_model(recipe.model.name_or_path, recipe.model.cache_dir), "float32")
    if torch.cuda.is_available():
        model = model.to("cuda")
    train_rows, eval_rows = read_rows(rows_path, recipe, tokenizer)
    start = time.perf_counter()
    if label.startswith("base"):
        scored = evaluate_columns(recipe, model, tokenizer, eval_rows, ("base",))["base"]
        record = {}
    else:
        trainer, trained = train(recipe, model, tokenizer, train_rows, out / "trainer")
        scored = evaluate_columns(recipe, trainer.model, tokenizer, eval_rows, ("tuned",))["tuned"]
        record = {"seed": recipe.training.seed, "steps": trained.steps, "train_seconds": trained.seconds}
    means = column_means([item["scores"] for item in scored])
    record |= {m: round(means[m], 4) for m in METRICS}
    record |= {"questions": len(scored), "seconds": round(time.perf_counter() - start, 1)}
    # Each question's completion beside its gold answer: what a variant changed, not only by how much.
    predictions = [{"question": r["question"], "gold": r["answer"], "completion": s["completion"],
                    "answer_match": s["scores"]["answer_match"]} for r, s in zip(eval_rows, scored, strict=True)]
    Path(result).with_name(f"{label}-predictions.json").write_text(json.dumps(predictions, indent=1))
    Path(result).write_text(json.dumps(record))
    return 0


def summary(results: list[dict], args, seconds: float, out: Path) -> dict:
    line = {"bench": "seed_sweep", "recipe": args.recipe, "overrides": args.overrides, "seeds": args.seeds}
    arms = {}
    variants = variant_arms(args.variant)
    for arm in ("recipe", *variants):
        runs = [r for r in results if r["arm"] == arm and "seed" in r]
        runs.sort(key=lambda r: args.seeds.index(r["seed"]))
        if not runs:
            continue
        base = next((r for r in results if r["label"] == f"base-{arm}"), None)
        base = base or next(r for r in results if r["label"] == "base-recipe")  # shared (shares_base)
        line["questions"] = base["questions"]
        am = [r["answer_match"] for r in runs]
        arms[arm] = {
            **({"overrides": variants[arm]} if arm in variants else {}),
            "base": {m: base[m] for m in ("answer_match", "format")},
            "per_seed": {str(r["seed"]): {m: r[m] for m in METRICS} for r in runs},
            "mean": {m: round(statistics.fmean(r[m] for r in runs), 4) for m in METRICS},
            "sd_answer_match": round(statistics.stdev(am), 4) if len(am) > 1 else None,
            "gain_mean": round(statistics.fmean(am) - base["answer_match"], 4),
        }
        if arm in variants and "recipe" in arms:  # the recipe arm comes first
            arms[arm] |= paired(arms[arm], arms["recipe"], args.seeds)
    line["arms"] = arms
    line |= {"parallel": args.parallel, "seconds": round(seconds, 1), "output_dir": str(out)}
    return line


def paired(variant: dict, recipe: dict, seeds: list[int]) -> dict:
    """The variant − recipe answer-match per seed, their mean and 95 % t-interval, and the ratio of the means."""
    diffs = [variant["per_seed"][str(s)]["answer_match"] - recipe["per_seed"][str(s)]["answer_match"] for s in seeds]
    mean = statistics.fmean(diffs)
    half = (t95(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5) if len(diffs) > 1 else None
    recipe_mean = recipe["mean"]["answer_match"]
    return {
        "paired": {"differences": [round(d, 4) for d in diffs], "mean": round(mean, 4),
                   "ci95": [round(mean - half, 4), round(mean + half, 4)] if half is not None else None},
        "ratio": round(variant["mean"]["answer_match"] / recipe_mean, 3) if recipe_mean else None,
    }


if __name__ == "__main__":
    sys.exit(main())
