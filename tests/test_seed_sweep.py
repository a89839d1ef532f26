"""benchmarks/seed_sweep.py: its argument checks and the paired summary it prints (no training here: the workers
run `toolkit.train.train` and `toolkit.evaluate`, tested in their own modules)."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from script_modules import load_script

from toolkit.recipe import load_recipe
from toolkit.rewards import build_reward

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "seed_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    return load_script(SCRIPT)


def test_missing_rows_file_is_one_line_error_before_anything_is_written(tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SCRIPT), "--rows", "nowhere", "--output-dir", str(out),
                           "--variant", "training.max_steps=2", "--variant", "training.beta=0.1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    # The relative --rows is the caller's path, not the project's; every arm's file is named.
    assert f"--rows {tmp_path / 'nowhere'}: no rows-recipe.json, rows-variant.json, rows-variant2.json there" in last
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_every_arms_recipe_is_checked_before_anything_is_built(tmp_path):
    # The recipe arm and the first variant are fine, the second is not: nothing is built for the first arms either
    # (it built the recipe arm's index and prompts, then failed with a RecipeError traceback).
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "--output-dir", str(out),
                           "--variant", "training.beta=0.1", "--variant", "training.lerning_rate=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "training.lerning_rate: unknown field" in last
    assert not out.exists()


def test_an_override_after_seeds_is_told_where_it_goes(tmp_path):
    # --seeds takes every value after it: an override there is not a seed ("invalid int value" said only that).
    done = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "training.max_steps=2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "training.max_steps=2 is a recipe override, not a seed" in last and "go before --seeds" in last
    usage = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert "they go before --seeds and --variant" in " ".join(usage.stdout.split())


def _result(arm, seed, answer_match, fmt=1.0):
    label = f"tuned-{arm}-s{seed}" if seed is not None else f"base-{arm}"
    record = {"arm": arm, "label": label, "answer_match": answer_match, "format": fmt, "truncated": 0.0,
              "questions": 56}
    return record | ({"seed": seed} if seed is not None else {})


def test_summary_pairs_variant_and_recipe_by_seed(sweep, tmp_path):
    results = [_result("recipe", None, 0.05), _result("variant", None, 0.05, fmt=0.2),
               # finished out of order, as parallel workers do
               _result("variant", 2, 0.30), _result("recipe", 1, 0.20), _result("recipe", 2, 0.25),
               _result("variant", 1, 0.20), _result("recipe", 3, 0.15), _result("variant", 3, 0.25)]
    args = Namespace(recipe="recipes/wine.yaml", overrides=[], seeds=[1, 2, 3], variant=[["training.x=1"]], parallel=2)
    line = sweep.summary(results, args, 12.34, tmp_path)
    recipe, variant = line["arms"]["recipe"], line["arms"]["variant"]
    assert list(recipe["per_seed"]) == ["1", "2", "3"]
    assert recipe["mean"]["answer_match"] == 0.2 and variant["mean"]["answer_match"] == 0.25
    assert recipe["gain_mean"] == 0.15 and variant["base"] == {"answer_match": 0.05, "format": 0.2}
    assert variant["overrides"] == ["training.x=1"] and "paired" not in recipe
    assert variant["paired"]["differences"] == [0.0, 0.05, 0.1]
    assert variant["paired"]["mean"] == 0.05
    # t(2 df) = 4.303, sd of the differences 0.05: half-width 4.303 * 0.05 / sqrt(3) = 0.1242
    assert variant["paired"]["ci95"] == [-0.0742, 0.1742]
    assert variant["ratio"] == 1.25 and line["seconds"] == 12.3 and line["questions"] == 56


def test_several_variants_are_each_paired_with_the_one_recipe_arm(sweep, tmp_path):
    assert sweep.variant_arms([["a=1"], ["b=2", "c=3"]]) == {"variant": ["a=1"], "variant2": ["b=2", "c=3"]}
    results = [_result("recipe", None, 0.05), _result("variant2", None, 0.10),  # variant shares the recipe's base
               _result("recipe", 1, 0.20), _result("recipe", 2, 0.30),
               _result("variant", 1, 0.25), _result("variant", 2, 0.25),
               _result("variant2", 1, 0.10), _result("variant2", 2, 0.20)]
    args = Namespace(recipe="recipes/wine.yaml", overrides=[], seeds=[1, 2],
                     variant=[["training.x=1"], ["retrieval.top_k=2"]], parallel=3)
    arms = sweep.summary(results, args, 1.0, tmp_path)["arms"]
    assert list(arms) == ["recipe", "variant", "variant2"]
    assert arms["variant"]["paired"]["differences"] == [0.05, -0.05] and arms["variant"]["ratio"] == 1.0
    assert arms["variant2"]["paired"]["differences"] == [-0.1, -0.1] and arms["variant2"]["ratio"] == 0.6
    assert arms["variant2"]["overrides"] == ["retrieval.top_k=2"]
    assert arms["variant"]["base"]["answer_match"] == 0.05 and arms["variant2"]["base"]["answer_match"] == 0.1
    assert arms["variant2"]["gain_mean"] == 0.05


class _OpensThink:
    """A tokenizer stand-in whose chat template opens every reply with "<think>" (as DeepSeek-R1's does)."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(m["content"] for m in messages) + "<|Assistant|><think>"


def test_workers_put_back_the_reply_prefix_as_toolkit_run_does(sweep, tmp_path):
    # Without it, the sampled "…</think><answer>X</answer>" lacks its opening tag and every format reward scores 0.
    row = {"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}
    path = tmp_path / "rows-recipe.json"
    path.write_text(json.dumps({"train": [row, row], "eval": [row, row, row]}))
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", ["eval.limit=2"])
    train_rows, eval_rows = sweep.read_rows(str(path), recipe, _OpensThink())
    assert len(train_rows) == 2 and len(eval_rows) == 2
    assert all(r["completion_prefix"] == "<think>" for r in train_rows + eval_rows)
    strict = build_reward("format", {"mode": "strict"})
    completion = "Rioja follows the Ebro River.</think><answer>Ebro River</answer>"
    assert strict([completion], completion_prefix=["<think>"]) == [1.0]


def test_a_training_variant_on_the_same_prompts_shares_the_recipes_base_worker(sweep, tmp_path):
    rows = {arm: tmp_path / f"rows-{arm}.json" for arm in ("recipe", "variant")}
    rows["recipe"].write_text('{"train": [1], "eval": [2]}')
    rows["variant"].write_text('{"train": [1], "eval": [2]}')
    assert sweep.shares_base(["training.scale_rewards=none", "training.trl.beta=0.1"], rows)
    # An untrained model still reads the eval settings and the rewards' format checks.
    assert not sweep.shares_base(["training.beta=0.1", "eval.max_new_tokens=64"], rows)
    assert not sweep.shares_base(["rewards.0.weight=2"], rows)
    rows["variant"].write_text('{"train": [1], "eval": [3]}')  # prompts that came out differently
    assert not sweep.shares_base(["training.beta=0.1"], rows)
    rows["variant2"] = tmp_path / "rows-variant2.json"
    rows["variant2"].write_text('{"train": [1], "eval": [2]}')  # a second variant: its own prompts are compared
    assert sweep.shares_base(["training.beta=0.1"], rows, "variant2")

    results = [_result("recipe", None, 0.05), _result("recipe", 1, 0.20), _result("variant", 1, 0.30)]
    args = Namespace(recipe="recipes/wine.yaml", overrides=[], seeds=[1], variant=[["training.x=1"]], parallel=2)
    line = sweep.summary(results, args, 1.0, tmp_path)
    assert line["arms"]["variant"]["base"] == line["arms"]["recipe"]["base"] == {"answer_match": 0.05, "format": 1.0}
    assert line["arms"]["variant"]["gain_mean"] == 0.25


def test_reused_rows_built_from_other_prompt_settings_are_refused(sweep, tmp_path):
    # A variant that changes the prompt would otherwise train on the recipe's prompts, copied to its arm's file.
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml")
    built = {"train": [], "eval": [], "built_from": sweep.prompt_settings(recipe)}
    for arm in ("recipe", "variant", "variant2"):
        (tmp_path / f"rows-{arm}.json").write_text(json.dumps(built))
    recipe_path = str(ROOT / "recipes" / "wine.yaml")
    assert sweep.stale_rows(tmp_path / "rows-variant.json", ["training.beta=0.1"], recipe_path) is None
    assert sweep.stale_rows(tmp_path / "rows-variant.json", ["retrieval.top_k=2"], recipe_path) == "retrieval.top_k"
    assert sweep.stale_rows(tmp_path / "rows-variant.json", ["prompt.examples=[]"], recipe_path) == "prompt.examples"

    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SCRIPT), "--rows", str(tmp_path), "--output-dir", str(out),
                           "--variant", "training.beta=0.1", "--variant", "prompt.system=Answer."],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert f"--rows {tmp_path}: rows-variant2.json was built with another prompt.system than arm 'variant2'" in last
    assert not out.exists()

    del built["built_from"]  # written before the files recorded their settings
    (tmp_path / "rows-recipe.json").write_text(json.dumps(built))
    assert "an older seed_sweep" in sweep.stale_rows(tmp_path / "rows-recipe.json", [], recipe_path)


def test_the_paired_interval_of_many_seeds_uses_students_t(sweep, tmp_path):
    # 16 seeds (as the wine recipe's max_grad_norm sweep ran): t(15 df) = 2.131, not the normal 1.96 used past 11.
    seeds = list(range(1, 17))
    results = [_result("recipe", None, 0.05)]
    for seed in seeds:
        results += [_result("recipe", seed, 0.20), _result("variant", seed, 0.20 + (0.1 if seed % 2 else 0.0))]
    args = Namespace(recipe="recipes/wine.yaml", overrides=[], seeds=seeds, variant=[["training.x=1"]], parallel=2)
    paired = sweep.summary(results, args, 1.0, tmp_path)["arms"]["variant"]["paired"]
    # differences 0.1, 0, 0.1, ...: mean 0.05, sd sqrt(16 * 0.05**2 / 15) = 0.05164; half-width 2.131 * 0.05164 / 4
    assert paired["mean"] == 0.05
    assert paired["ci95"] == [0.0225, 0.0775]
    assert [round(sweep.t95(df), 3) for df in (1, 7, 15, 30)] == [12.706, 2.365, 2.131, 2.042]  # the t tables'


@pytest.mark.parametrize("text, message", [("{bad", "is unreadable (Expecting property name"),
                                           ("[1]", "is not a rows file (a JSON object), got list")])
def test_a_damaged_rows_file_is_one_line(tmp_path, text, message):
    # json.loads raised JSONDecodeError, and a list's .get AttributeError, out of main as a traceback.
    (tmp_path / "rows-recipe.json").write_text(text)
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SCRIPT), "--rows", str(tmp_path), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert " ".join(done.stderr.split()).startswith(f"error: --rows: {tmp_path / 'rows-recipe.json'} {message}"), \
        done.stderr
    assert not out.exists()
