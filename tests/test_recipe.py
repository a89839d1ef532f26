"""Tests for toolkit.recipe: shipped recipes validate, overrides, and one-line errors from the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toolkit.loaders import expand
from toolkit.recipe import EvalSection, ExportSection, ModelSection, Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
WINE = ROOT / "recipes" / "wine.yaml"


# ---------------------------------------------------------------------------------------- shipped recipes


def test_recipes_are_shipped():
    assert RECIPES, "no recipes/*.yaml"


# Recipes whose corpus is data kept beside the project (../shared/data, never copied into it). Where that data is
# absent (a clone on its own), the recipe is checked against a stand-in CSV of the same columns instead.
OUTSIDE_DATA = {"winemag.yaml": ROOT.parent / "shared" / "data" / "winemag-reviews.csv"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(path, winemag_csv):
    outside = OUTSIDE_DATA.get(path.name)
    overrides = [f"data.corpus.0.path={winemag_csv()}"] if outside is not None and not outside.is_file() else []
    recipe = load_recipe(path, overrides)
    assert isinstance(recipe, Recipe)
    # Every corpus entry names existing files; question files exist where given.
    assert all(expand(source.path) for source in recipe.data.corpus)
    assert all(p.is_file() for p in [recipe.data.train, recipe.data.eval] if p is not None)
    for spec in recipe.rewards:
        assert callable(spec.build())


# ------------------------------------------------------------------------------------------- the CLI

# case id -> (recipe argument, overrides, substrings the one error line must contain). A recipe of None is
# replaced by a file the fixture writes.
CLI_CASES = {
    "unknown_key": ("recipes/wine.yaml", ["training.lerning_rate=1"],
                    ["training.lerning_rate", "did you mean 'learning_rate'"]),
    "wrong_type": ("recipes/wine.yaml", ["training.max_steps=abc"], ["training.max_steps", "abc"]),
    "missing_corpus_file": ("recipes/wine.yaml", ["data.corpus=[nope.jsonl]"], ["data.corpus.0", "nope.jsonl"]),
    "unknown_reward": ("recipes/wine.yaml", ["rewards.0.name=answer_mach"],
                       ["rewards.0", "unknown reward 'answer_mach'", "did you mean 'answer_match'"]),
    "bad_reward_param": ("recipes/wine.yaml", ["rewards.0.params.partiall=true"],
                         ["rewards.0", "unknown param 'partiall'", "partial"]),
    "generation_batch": ("recipes/wine.yaml", ["training.per_device_train_batch_size=6"],
                         ["training", "num_generations (4)", "= 6"]),
    "override_without_equals": ("recipes/wine.yaml", ["training.max_steps"],
                                ["'training.max_steps'", "section.field=value"]),
    "missing_recipe": ("recipes/no-such-recipe.yaml", [], ["recipes/no-such-recipe.yaml", "not found"]),
    "invalid_yaml": (None, [], [":3:", "invalid YAML"]),
}
BAD_YAML = "output_dir: runs/x\ntraining:\n  max_steps: 1: 2\nmodel: {}\n"  # error on line 3


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Run every CLI case at once (each start pays for importing torch and TRL) and collect (rc, stderr)."""
    bad = tmp_path_factory.mktemp("recipes") / "broken.yaml"
    bad.write_text(BAD_YAML)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80",
           "PYTHONIOENCODING": "utf-8"}
    procs = {}
    for case, (recipe, overrides, _) in CLI_CASES.items():
        argv = [sys.executable, "-m", "toolkit.run", str(bad) if recipe is None else recipe, *overrides]
        procs[case] = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8"
        )
    results = {}
    for case, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        results[case] = (proc.returncode, stderr)
    return results, bad


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_rejects_bad_recipe_with_one_line(cli_results, case):
    results, bad = cli_results
    returncode, stderr = results[case]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    line = lines[0]
    for expected in CLI_CASES[case][2]:
        assert expected in line, line
    if CLI_CASES[case][0] is None:
        assert line.startswith(f"error: {bad}:3:"), line


# ------------------------------------------------------------------------------------ load_recipe in-process


def test_overrides_set_nested_values_and_list_items():
    recipe = load_recipe(
        WINE,
        [
            "rewards.0.weight=2.5",
            "rewards.4.params.max_words=10",
            "training.lora.r=4",
            "retrieval.top_k=3",
            "model.cache_dir=/tmp/toolkit-cache",
        ],
    )
    assert recipe.rewards[0].weight == 2.5
    assert recipe.rewards[4].params == {"min_words": 3, "max_words": 10, "falloff": 40}
    assert recipe.training.lora.r == 4
    assert recipe.retrieval.top_k == 3
    assert recipe.model.cache_dir == Path("/tmp/toolkit-cache")
    untouched = load_recipe(WINE)
    assert recipe.rewards[1:4] == untouched.rewards[1:4]
    assert recipe.training.learning_rate == untouched.training.learning_rate


@pytest.mark.parametrize("trl, message", [
    ("{optim: bogus}", "training.trl.optim: not a valid OptimizerNames (one of adamw_torch, "),
    ("{optim: adamw_8bitt}", "training.trl.optim: not a valid OptimizerNames (did you mean 'adamw_8bit'?)"),
    ("{optim: null}", "training.trl.optim: not a valid OptimizerNames ("),
    ("{save_strategy: epochs}", "training.trl.save_strategy: not a valid SaveStrategy (did you mean 'epoch'?)"),
])
def test_trl_enum_values_are_checked_when_the_recipe_loads(trl, message):
    # TrainingArguments converts these only when the trainer is built: after the index and both base columns,
    # as a traceback.
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(WINE, [f"training.trl={trl}"])
    assert load_recipe(WINE, ["training.trl={optim: sgd, save_strategy: epoch}"]).training.trl["optim"] == "sgd"


def test_a_mapping_override_merges_key_by_key_as_extends_does():
    # `training={max_steps: 1}` once replaced the whole section, silently putting every other training field back
    # to the schema's default (the recipe's learning rate, LoRA layers, generations); it now merges.
    wine, r1 = load_recipe(WINE), load_recipe(WINE_R1)
    recipe = load_recipe(WINE, ["training={max_steps: 1, lora: {r: 4}}", "rewards.1={weight: 2.0}"])
    assert (recipe.training.max_steps, recipe.training.lora.r) == (1, 4)
    assert recipe.training.learning_rate == wine.training.learning_rate
    assert recipe.training.lora.layers_to_transform == wine.training.lora.layers_to_transform
    assert recipe.training.model_dump(exclude={"max_steps", "lora"}) == wine.training.model_dump(
        exclude={"max_steps", "lora"})
    assert (recipe.rewards[1].name, recipe.rewards[1].weight) == (wine.rewards[1].name, 2.0)
    assert recipe.rewards[1].params == wine.rewards[1].params
    merged = load_recipe(WINE_R1, ["training.trl={max_grad_norm: 1.0}"])
    assert merged.training.trl == {**r1.training.trl, "max_grad_norm": 1.0}  # optim and checkpointing kept
    # null first replaces a mapping whole; a list or a scalar always replaces.
    replaced = load_recipe(WINE_R1, ["training.trl=null", "training.trl={max_grad_norm: 1.0}"])
    assert replaced.training.trl == {"max_grad_norm": 1.0}
    # A field the override merged in is named as the command line's, not the parent's.
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE_R1, ["training={lerning_rate: 1.0}"])
    assert str(err.value).startswith(f"{WINE_R1}: training.lerning_rate: unknown field")


def test_an_empty_section_takes_its_defaults(tmp_path):
    # YAML reads `training:` with every field commented out as null; it was "Input should be a valid dictionary".
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {WINE}\neval:\n  # max_new_tokens: 64\nexport:\n")
    loaded = load_recipe(recipe)
    assert loaded.eval == EvalSection() != load_recipe(WINE).eval and loaded.export == ExportSection()
    r1 = load_recipe(WINE_R1, ["training.trl=null", "model=null", "rewards.0.params=null", "prompt.examples=null"])
    assert r1.training.trl == {} and r1.model == ModelSection() and r1.rewards[0].params == {}
    assert r1.prompt.examples == []
    assert load_recipe(WINE_R1).training.trl  # there was something to clear


def test_an_override_fills_in_a_section_left_empty(tmp_path):
    # A null section ("export:", "trl:") was "export is not a section" to a dotted override under it.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {WINE}\nexport:\ntraining:\n  trl:\n")
    loaded = load_recipe(recipe, ["export.formats=[adapter]", "training.trl.optim=sgd"])
    assert loaded.export == ExportSection(formats=["adapter"])
    assert loaded.training.trl == {"optim": "sgd"}
    assert load_recipe(WINE_R1, ["training.trl=null", "training.trl.optim=sgd"]).training.trl == {"optim": "sgd"}
    assert load_recipe(WINE, ["rewards.0.params=null", "rewards.0.params.partial=false"]).rewards[0].params == {
        "partial": False}
    with pytest.raises(RecipeError, match=re.escape("override eval.limit.x: eval.limit is not a section but 5; set "
                                                    "it whole (eval.limit=...)")):
        load_recipe(recipe, ["eval.limit=5", "eval.limit.x=1"])  # a value in the way is still an error


def test_an_override_changes_one_use_of_an_anchored_mapping_not_every_alias(tmp_path):
    # `params: *p` is the anchor's very object: an override of one reward's params (dotted or merged) changed the
    # other reward's too, without a word.
    recipe = _write(tmp_path / "r.yaml", f"""
extends: {WINE}
rewards:
  - {{name: length, weight: 0.25, params: &p {{min_words: 3, max_words: 40}}}}
  - {{name: length, label: length2, weight: 0.25, params: *p}}
""")
    for override in ("rewards.0.params.max_words=10", "rewards.0.params={max_words: 10}",
                     "rewards.0={params: {max_words: 10}}"):
        loaded = load_recipe(recipe, [override])
        assert loaded.rewards[0].params == {"min_words": 3, "max_words": 10}, override
        assert loaded.rewards[1].params == {"min_words": 3, "max_words": 40}, override


def test_exponents_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 (PyYAML) read 1e-3 as a string: pydantic's float fields coerced it, but a reward param refused it
    # ("param 'tolerance' must be a number, got '1e-3'"). Read as YAML 1.2 does.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {WINE}\nrewards:\n  - {{name: answer_match, params: {{tolerance: 1e-3, "
                      f"rel_tolerance: 1E-2}}}}\ntraining:\n  learning_rate: 5e-4\n  max_steps: 10\n")
    loaded = load_recipe(recipe)
    assert loaded.rewards[0].params == {"tolerance": 0.001, "rel_tolerance": 0.01}
    assert loaded.training.learning_rate == 5e-4
    assert loaded.training.max_steps == 10 and isinstance(loaded.training.max_steps, int)
    overridden = load_recipe(WINE, ["rewards.0.params.tolerance=1e-3", "rewards.0.params.rel_tolerance=+2.5e-2",
                                    "rewards.0.weight=2E0", "training.trl.max_grad_norm=-2e+3"])
    assert overridden.rewards[0].params == {"partial": True, "tolerance": 0.001, "rel_tolerance": 0.025}
    assert overridden.rewards[0].weight == 2.0
    assert overridden.training.trl["max_grad_norm"] == -2000.0
    # Words that only look like exponents stay strings.
    words = load_recipe(WINE, ["prompt.system=e5", "rewards.0.label=1e"])
    assert (words.prompt.system, words.rewards[0].key) == ("e5", "1e")


def test_override_values_are_parsed_as_yaml():
    recipe = load_recipe(
        WINE,
        [
            "eval.limit=5",
            "output_dir=/tmp/x",
            "training.mask_truncated_completions=true",
            "training.learning_rate=1e-4",  # a float, as in YAML 1.2 (YAML 1.1 reads a string)
            "training.lora.target_modules=[q_proj, v_proj]",
            "rewards.1.params={mode: soft}",
            "data.max_train_questions=null",
        ],
    )
    assert recipe.eval.limit == 5 and isinstance(recipe.eval.limit, int)
    assert recipe.output_dir == Path("/tmp/x")
    assert recipe.training.mask_truncated_completions is True
    assert recipe.training.learning_rate == 1e-4
    assert recipe.training.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.rewards[1].params == {"mode": "soft"}
    assert recipe.data.max_train_questions is None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["outptu_dir=x"], "outptu_dir: unknown field (did you mean 'output_dir'?)"),
        (["zzz=1"], "zzz: unknown field (known fields: data, eval, export, model, output_dir, prompt, retrieval"),
        (["training.lora.rr=3"], "training.lora.rr: unknown field (did you mean 'r'?)"),
        (["rewards.0.wieght=1"], "rewards.0.wieght: unknown field (did you mean 'weight'?)"),
        (["rewards.9.weight=1"], "rewards.9 is not an index of a 6-item list"),
        (["rewards.x.weight=1"], "rewards.x is not an index"),
        # str.isdigit() takes these: int() refused the superscript two and read the Arabic-Indic zero as 0.
        (["rewards.².weight=2"], "rewards.² is not an index of a 6-item list"),
        (["rewards.٠.weight=2"], "rewards.٠ is not an index of a 6-item list"),
        ([f"rewards.{'9' * 5000}.weight=2"], " is not an index of a 6-item list"),
        (["model.dtype.bits=4"], "model.dtype is not a section but \"float32\"; set it whole (model.dtype=...)"),
        # wine.yaml's corpus entries are plain paths (winemag.yaml's are sections with a path).
        (["data.corpus.0.path=my.csv"], "data.corpus.0 is not a section but \"data/wine/docs.jsonl\"; set it whole "
                                        "(data.corpus.0=...)"),
        (["=3"], "must look like section.field=value"),
        (["data=null"], "data: required, and empty (null) here"),
        (["rewards.0.name=null"], "rewards.0.name: required, and empty (null) here"),
        (["training.max_steps=null"], "training.max_steps: Input should be a valid integer"),  # a scalar: no default
        # A stray dot was reported as an unknown field "recipe" or "training." without saying what was wrong.
        ([".training=1"], "override '.training=1': '.training' has an empty name between dots"),
        (["training.=1"], "'training.' has an empty name between dots"),
        (["training..lora.r=1"], "'training..lora.r' has an empty name between dots"),
        (["model.dtype=float8"], "model.dtype:"),
        (["retrieval.chunk_overlap=128"], "chunk_overlap (128) must be smaller than chunk_size (128)"),
        (["prompt.user_template='Q: {question}'"], "user_template must contain {context}"),
        (["rewards=[]"], "rewards:"),
        (["rewards.1.params.mode=loose"], "unknown mode 'loose'"),
        (["rewards.0.params.partial=1"], "param 'partial' must be a bool"),
        (["rewards.4.params.min_words=50"], "min_words (50) > max_words (40)"),
        # YAML reads yes/on/true as a boolean, and pydantic's lax mode would read that as 1: one training step.
        (["training.max_steps=yes"], "training.max_steps: expected a number, got a boolean"),
        (["training.learning_rate=on"], "training.learning_rate: expected a number, got a boolean"),
        (["training.lora.r=true"], "training.lora.r: expected a number, got a boolean"),
        (["eval.limit=no"], "eval.limit: expected a number, got a boolean"),
        (["rewards.0.weight=true"], "rewards.0.weight: expected a number, got a boolean"),
        # A weight of .inf or .nan trained on NaN rewards (TRL's nansum drops them) and wrote NaN into report.json.
        (["rewards.0.weight=.inf"], "rewards.0.weight: Input should be a finite number"),
        (["training.learning_rate=.nan"], "training.learning_rate: Input should be a finite number"),
        # An empty path is Path(""), the current folder: a run would write into the cwd, a corpus read all of it.
        (["output_dir="], "output_dir: must not be empty"),
        (["output_dir=recipes/wine.yaml"], "output_dir: recipes/wine.yaml is a file, not a folder"),
        (["model.cache_dir=recipes/wine.yaml"], "model.cache_dir: recipes/wine.yaml is a file, not a folder"),
        # GRPOConfig takes these unchecked: 0 trained nothing with exit 0, -1 failed deep in torch's sampler.
        (["training.trl.num_iterations=0"], "training.trl.num_iterations: must be at least 1 (got 0)"),
        (["training.trl.steps_per_generation=-1"], "training.trl.steps_per_generation: must be at least 1 (got -1)"),
        # A YAML "\ud800" escape is no text: the tokenizer failed on it after the index was built.
        (['prompt.system="x\\ud800"'], "prompt.system: holds a lone surrogate '\\ud800'"),
        (['prompt.examples.0.context=["a\\udfff"]'], "prompt.examples.0.context: holds a lone surrogate"),
        (["output_dir=recipes/wine.yaml/run"], "output_dir: recipes/wine.yaml is a file, not a folder (recipes/"),
        (["data.corpus=['']"], "data.corpus.0.path: must not be empty"),
        (["data.train=''"], "data.train: must not be empty"),
        (["model.name_or_path=' '"], "model.name_or_path: must not be empty"),
        (["retrieval.embedder=''"], "retrieval.embedder: must not be empty"),
        (["rewards.0.label=''"], "rewards.0.label: must not be empty"),
    ],
)
def test_bad_overrides_raise_recipe_error(overrides, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, overrides)
    message = str(err.value)
    assert message.startswith(f"{WINE}: ")
    assert expected in message
    assert "\n" not in message


def test_several_problems_are_reported_on_one_line():
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.max_steps=0", "eval.batch_size=abc"])
    message = str(err.value)
    assert "training.max_steps" in message and "eval.batch_size" in message
    assert "\n" not in message


def test_extra_top_level_key_rejected(tmp_path):
    raw = yaml.safe_load(WINE.read_text())
    raw["notes"] = "a stray section"
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=r"notes: unknown field"):
        load_recipe(path)


@pytest.mark.parametrize("text, expected", [("", "got NoneType"), ("- a\n- b\n", "got list")])
def test_recipe_must_be_a_mapping(tmp_path, text, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:3: invalid YAML")


def test_a_control_character_is_one_line_naming_the_line(tmp_path):
    # PyYAML's ReaderError has no `problem`: the message was its str(), two lines and no line number.
    path = tmp_path / "bell.yaml"
    path.write_text(f"extends: {WINE}\nmodel:\n  dtype: float\x0732\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:3: invalid YAML: unacceptable character #x0007: special characters are not "
                              "allowed")
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["prompt.system=a\x07b"])
    assert str(err.value) == (f"{WINE}: override prompt.system: value is not valid YAML (unacceptable character "
                              "#x0007: special characters are not allowed)")


def test_yaml_1_1_octal_and_base_60_ints_are_refused_not_misread(tmp_path):
    # PyYAML reads YAML 1.1: `max_steps: 010` trained 8 steps and `seed: 1:30` seeded 90, without a word.
    path = _write(tmp_path / "octal.yaml", f"extends: {WINE}\ntraining:\n  max_steps: 010\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:3: invalid YAML: 010 is an octal number in YAML 1.1 (8): write 10 for the "
                              "decimal, or quote it for text")
    with pytest.raises(RecipeError, match=re.escape("override training.seed: value is not valid YAML (1:30 is a "
                                                    "base-60 number in YAML 1.1 (90): quote it for text")):
        load_recipe(WINE, ["training.seed=1:30"])
    assert load_recipe(WINE, ["training.seed=10", "training.max_steps=0x1c"]).training.max_steps == 28


def test_an_int_beyond_python_s_digit_limit_is_one_line(tmp_path):
    # PyYAML's int() raised a plain ValueError (over 4300 digits), which no command reports: a traceback.
    path = _write(tmp_path / "big.yaml", f"extends: {WINE}\ntraining:\n  seed: {'1' * 5000}\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}: cannot read the recipe: Exceeds the limit")):
        load_recipe(path)
    with pytest.raises(RecipeError, match=re.escape(f"{WINE}: override training.seed: Exceeds the limit")):
        load_recipe(WINE, [f"training.seed={'1' * 5000}"])
    child = _write(tmp_path / "nul.yaml", 'extends: "wine\\0.yaml"\n')  # a NUL in the parent's path
    with pytest.raises(RecipeError, match=re.escape(f"{child}: extends: 'wine\\x00.yaml': embedded null byte")):
        load_recipe(child)


def test_a_key_given_twice_is_an_error_not_a_silent_drop(tmp_path):
    # Plain YAML keeps the second `training:` and drops the first one's max_steps without a word.
    path = tmp_path / "twice.yaml"
    path.write_text(f"extends: {WINE}\ntraining:\n  max_steps: 5\neval: {{limit: 3}}\ntraining:\n  seed: 1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:5: invalid YAML: key 'training' appears twice in one mapping"
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.trl={max_grad_norm: 0.1, max_grad_norm: 1.0}"])
    assert str(err.value).endswith("(key 'max_grad_norm' appears twice in one mapping)")  # no "quote it" hint


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "cannot read the recipe: Is a directory"),
    (lambda p: p.write_bytes(b"training:\n  seed: \xff\n"), "not UTF-8 text (byte 0xff at offset 18)"),
])
def test_an_unreadable_recipe_file_is_one_line(tmp_path, make, message):
    path = tmp_path / "r.yaml"
    make(path)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: {message}"


def test_reward_listed_twice_needs_a_label():
    # wine.yaml lists `format` twice, told apart by labels; without them the keys collide.
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["rewards.1.label=null", "rewards.2.label=null"])
    message = str(err.value)
    assert "rewards" in message and "'format'" in message and "`label`" in message

    recipe = load_recipe(WINE, ["rewards.1.label=null"])  # one of the two may go without a label
    assert [spec.key for spec in recipe.rewards if spec.name == "format"] == ["format", "format_soft"]
    assert len({spec.key for spec in load_recipe(WINE).rewards}) == len(load_recipe(WINE).rewards)


def test_json_dump_round_trips():
    recipe = load_recipe(WINE, ["eval.limit=3", "model.cache_dir=/tmp/c"])
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe


def test_json_dump_round_trips_through_a_recipe_file(tmp_path):
    # A run's report holds model_dump(mode="json"); written back as YAML it must rerun the same recipe.
    recipe = load_recipe(WINE)
    path = tmp_path / "from-report.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    assert load_recipe(path) == recipe


@pytest.mark.parametrize("override", ["prompt.system=a: b: c", "training.max_steps=[", "prompt.system=!important: x"])
def test_unparsable_override_value_is_a_recipe_error(override):
    with pytest.raises(RecipeError, match=rf"override {re.escape(override.split('=')[0])}: value is not valid YAML") \
            as err:
        load_recipe(WINE, [override])
    assert "; quote it, e.g." in str(err.value)


# ------------------------------------------------------------------------------------------- data.corpus


WINEMAG = ROOT / "recipes" / "winemag.yaml"


def test_corpus_entries_are_paths_or_mappings():
    recipe = load_recipe(WINE, ["data.corpus=[data/wine, 'data/wine/*.jsonl', {path: data/wine/docs.jsonl}]"])
    assert [str(source.path) for source in recipe.data.corpus] == ["data/wine", "data/wine/*.jsonl",
                                                                   "data/wine/docs.jsonl"]
    assert recipe.data.corpus[2].template is None and recipe.data.corpus[2].metadata_columns == []


def test_winemag_recipe_takes_the_csv_path_as_an_override(tmp_path):
    csv = tmp_path / "winemag-data-130k-v2.csv"
    csv.write_text("id,title\n1,x\n")
    recipe = load_recipe(WINEMAG, [f"data.corpus.0.path={csv}"])
    [source] = recipe.data.corpus
    assert source.path == csv and source.id_column == "id" and source.questions is not None
    assert recipe.data.train is None and recipe.data.eval is None  # every question comes from the rows
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.corpus.0.path=nope/*.jsonl"], "data.corpus.0.path: no file matches nope/*.jsonl"),
        (["data.corpus.0.path=nope.csv"], "data.corpus.0.path: file not found: nope.csv"),
        (["data.corpus.0.metadata_columns=[source]"], "metadata column 'source' is reserved"),
        (["data.corpus.0.metadata_columns=[$price]"], "metadata column '$price' cannot be stored in the index"),
        (["data.corpus.0.template='{title:>10}'"], "only plain {column} placeholders"),
        (["data.corpus.0.template='no placeholders'"], "has no {column} placeholder"),
        (["data.corpus.0.questions.templates.0.question=Which grape?"], "has no {column} placeholder"),
        (["data.corpus.0.questions.templates.0.answr=variety"], "answr: unknown field (did you mean 'answer'?)"),
        (["data.corpus.0.questions.eval_fraction=1"], "eval_fraction"),
        (["data.corpus.0.questions=null"], "train and eval question files needed"),
        (["data.corpus.0.questions=null", "data.train=data/wine/train.jsonl"], "eval question file needed"),
        (["data.corpus.0.path=data/wine/docs.jsonl"], "template, id_column, questions, metadata_columns: only for "
                                                      ".csv files"),
        (["data.corpus.0.template=null"], "give a row template"),
    ],
)
def test_bad_corpus_entries(overrides, expected, winemag_csv):
    # On a stand-in for the recipe's CSV (../shared/data, which a clone on its own lacks), unless the case sets one.
    csv = [] if any(o.startswith("data.corpus.0.path=") for o in overrides) else [f"data.corpus.0.path={winemag_csv()}"]
    with pytest.raises(RecipeError) as err:
        load_recipe(WINEMAG, [*csv, *overrides])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", ["train", "eval"])
def test_a_folder_for_a_question_file_is_refused_at_load(field):
    # It used to pass and then fail after the backend was picked, with "data/wine: cannot read: Is a directory".
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, [f"data.{field}=data/wine"])
    assert f"data.{field}: data/wine is a folder; give a question file (.jsonl)" in str(err.value)
    assert "\n" not in str(err.value)


def test_corpus_path_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "reviews.csv").write_text("id,title\n1,x\n")
    assert load_recipe(WINEMAG, ["data.corpus.0.path=~/reviews.csv"]).data.corpus[0].path == tmp_path / "reviews.csv"


# ------------------------------------------------------------------------------------------------ extends

WINE_R1 = ROOT / "recipes" / "wine-r1.yaml"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_wine_r1_shares_data_prompt_and_rewards_with_wine():
    assert WINE_R1 in RECIPES  # so test_shipped_recipe_validates covers it
    raw = yaml.safe_load(WINE_R1.read_text())
    assert raw["extends"] == "wine.yaml"
    assert not {"data", "prompt", "rewards", "retrieval"} & set(raw), "inherited from wine.yaml, not copied"
    r1, wine = load_recipe(WINE_R1), load_recipe(WINE)
    assert (r1.data, r1.prompt, r1.rewards, r1.retrieval) == (wine.data, wine.prompt, wine.rewards, wine.retrieval)
    assert r1.model.name_or_path != wine.model.name_or_path and r1.output_dir != wine.output_dir
    assert r1.training.lora.target_modules == wine.training.lora.target_modules  # merged key by key
    assert r1.training.lora.layers_to_transform is None  # null replaces the parent's list


def test_extends_deep_merges_mappings_and_replaces_lists_and_scalars(tmp_path):
    # grandparent (the real wine.yaml, by absolute path) <- parent <- child, with relative `extends` in the child.
    _write(tmp_path / "base" / "parent.yaml", f"""
extends: {WINE}
output_dir: runs/parent
training:
  max_steps: 7
  lora: {{r: 4}}
eval: {{limit: 3}}
""")
    child = _write(tmp_path / "child.yaml", """
extends: base/parent.yaml
training:
  learning_rate: 1.0e-5
  lora: {alpha: 8}
rewards:
  - {name: answer_match, weight: 2.0}
data:
  corpus: [data/wine]
""")
    recipe, wine = load_recipe(child), load_recipe(WINE)
    assert recipe.output_dir == Path("runs/parent")                 # from the parent
    assert recipe.training.max_steps == 7                           # parent over grandparent
    assert recipe.training.learning_rate == 1e-5                    # child over both
    assert (recipe.training.lora.r, recipe.training.lora.alpha) == (4, 8)  # nested mappings merge
    assert recipe.training.lora.target_modules == wine.training.lora.target_modules
    assert recipe.training.num_generations == wine.training.num_generations
    assert [spec.name for spec in recipe.rewards] == ["answer_match"]  # a list replaces, it does not append
    assert [str(s.path) for s in recipe.data.corpus] == ["data/wine"]
    assert recipe.data.train == wine.data.train and recipe.prompt == wine.prompt
    assert recipe.eval.limit == 3 and recipe.eval.max_new_tokens == wine.eval.max_new_tokens
    # Command-line overrides apply last, over the whole chain.
    overridden = load_recipe(child, ["training.lora.r=16", "training.max_steps=2"])
    assert (overridden.training.lora.r, overridden.training.lora.alpha, overridden.training.max_steps) == (16, 8, 2)


@pytest.mark.parametrize("files, start, expected", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "a.yaml", "a.yaml -> {d}/b.yaml -> {d}/a.yaml"),
    ({"self.yaml": "extends: self.yaml\n"}, "self.yaml", "self.yaml -> {d}/self.yaml"),
    ({"x.yaml": "extends: sub/../x.yaml\n"}, "x.yaml", "x.yaml -> {d}/x.yaml"),
])
def test_extends_cycle_is_one_line_error(tmp_path, files, start, expected):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / start)
    message = str(err.value)
    assert "extends: cycle: " in message and message.endswith(expected.format(d=tmp_path)), message
    assert "\n" not in message


@pytest.mark.parametrize(("override", "expected"), [
    # pathlib reads a NUL path as absent, so it loaded and failed in mkdir after minutes (YAML's "\0" escape).
    ('output_dir="a\\0b"', "output_dir: a path cannot hold a NUL character"),
    ('model.cache_dir="c\\0"', "model.cache_dir: a path cannot hold a NUL character"),
    ('data.train="q\\0.jsonl"', "data.train: a path cannot hold a NUL character"),
    # peft took -1 and the model check refused it only after loading the model.
    ("training.lora.layers_to_transform=[-1, 3]", "training.lora.layers_to_transform.0: Input should be greater than "
                                                  "or equal to 0"),
])
def test_a_path_with_a_nul_or_a_negative_layer_is_refused_at_load(override, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.lora.target_modules=[q_proj]", override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_an_override_where_the_recipe_goes_says_so():
    # `toolkit.run training.max_steps=2 recipes/wine.yaml` said only "training.max_steps=2: recipe file not found".
    with pytest.raises(RecipeError) as err:
        load_recipe("training.max_steps=2", ["recipes/wine.yaml"])
    assert str(err.value) == ("training.max_steps=2: recipe file not found (this looks like an override: the recipe "
                              "path comes first, then the overrides)")
    with pytest.raises(RecipeError) as err:
        load_recipe("nope.yaml")
    assert str(err.value) == "nope.yaml: recipe file not found"


def test_extends_missing_parent_names_the_child(tmp_path):
    child = _write(tmp_path / "child.yaml", "extends: nope.yaml\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value) == f"{child}: extends: recipe file not found: {tmp_path / 'nope.yaml'}"


def test_extends_from_an_unknown_user_s_home_is_one_line(tmp_path):
    # Path.expanduser raises RuntimeError for "~nosuchuser/...": it was a traceback.
    child = _write(tmp_path / "child.yaml", "extends: ~nosuchuser-toolkit/wine.yaml\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value) == f"{child}: extends: '~nosuchuser-toolkit/wine.yaml': Could not determine home directory."


@pytest.mark.parametrize("value", ["3", "''", "[wine.yaml]"])
def test_extends_must_be_a_path(tmp_path, value):
    child = _write(tmp_path / "child.yaml", f"extends: {value}\n")
    with pytest.raises(RecipeError, match=r"child.yaml: extends: must be the path of a recipe file"):
        load_recipe(child)


def test_extends_parent_yaml_error_names_the_parent_and_line(tmp_path):
    _write(tmp_path / "parent.yaml", BAD_YAML)
    child = _write(tmp_path / "child.yaml", "extends: parent.yaml\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value).startswith(f"{tmp_path / 'parent.yaml'}:3: invalid YAML")


def test_typo_in_child_is_caught_with_did_you_mean(tmp_path):
    child = _write(tmp_path / "child.yaml", f"extends: {WINE}\ntraining:\n  lerning_rate: 1.0e-5\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value) == f"{child}: training.lerning_rate: unknown field (did you mean 'learning_rate'?)"


def test_problem_in_an_inherited_field_names_the_parent(tmp_path):
    parent = _write(tmp_path / "parent.yaml", WINE.read_text().replace("learning_rate:", "lerning_rate:"))
    child = _write(tmp_path / "child.yaml", "extends: parent.yaml\ntraining: {max_steps: 3}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value) == (f"{child}: training.lerning_rate (inherited from {parent}): unknown field "
                              "(did you mean 'learning_rate'?)")
    # Set again on the command line, the field is no longer the parent's alone.
    with pytest.raises(RecipeError) as err:
        load_recipe(child, ["training.lerning_rate=oops"])
    assert "(inherited from" not in str(err.value)
    # A section-level problem with fields from both files names only the recipe given.
    _write(tmp_path / "child.yaml", f"extends: {WINE}\ntraining: {{per_device_train_batch_size: 6}}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert str(err.value).startswith(f"{child}: training: the generation batch")
    assert "(inherited from" not in str(err.value)
    # A whole section replaced on the command line: none of its fields is the parent's any more.
    _write(tmp_path / "parent.yaml", f"extends: {WINE}\ntraining: {{max_steps: 3}}\n")
    _write(tmp_path / "child.yaml", "extends: parent.yaml\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child, ["training={max_steps: 0}"])
    assert str(err.value).startswith(f"{child}: training.max_steps: Input should be greater than or equal to 1")


def test_home_is_expanded_in_every_path_field(tmp_path, monkeypatch):
    # The shell leaves the ~ of `data.train=~/q.jsonl` alone; every path field expands it, not only the corpus's.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "q.jsonl").write_text('{"question": "Which river?", "answer": "Ebro"}\n')
    recipe = load_recipe(WINE, ["data.train=~/q.jsonl", "data.eval=~/q.jsonl", "output_dir=~/run",
                                "model.cache_dir=~/cache"])
    assert recipe.data.train == recipe.data.eval == tmp_path / "q.jsonl"
    assert (recipe.output_dir, recipe.model.cache_dir) == (tmp_path / "run", tmp_path / "cache")
    with pytest.raises(RecipeError, match=r"data\.train: ~nosuchuser-x/q\.jsonl: Could not determine home directory"):
        load_recipe(WINE, ["data.train=~nosuchuser-x/q.jsonl"])


def test_home_is_expanded_in_the_model_folder_and_the_recipe_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "wine.yaml").write_text((ROOT / WINE).read_text().replace("data/", f"{ROOT / 'data'}/"))
    recipe = load_recipe("~/wine.yaml", ["model.name_or_path=~/models/m"])
    assert recipe.model.name_or_path == str(tmp_path / "models" / "m")  # a folder, not a hub id "~/models/m"
    assert load_recipe(WINE, ["model.name_or_path=org/model"]).model.name_or_path == "org/model"
    with pytest.raises(RecipeError, match=r"^~nosuchuser-x/r\.yaml: Could not determine home directory"):
        load_recipe("~nosuchuser-x/r.yaml")


# ------------------------------------------------------------------------- training.trl: GRPOConfig passthrough


@pytest.mark.parametrize(
    "trl, expected",
    [
        ("{max_grad_nrm: 0.1}", "training.trl.max_grad_nrm: not a trl.GRPOConfig field (did you mean "
                                "'max_grad_norm'?)"),
        # Close to a field the recipe maps: the suggestion is the recipe field.
        ("{lerning_rate: 0.1}", "training.trl.lerning_rate: not a trl.GRPOConfig field (did you mean "
                                "training.learning_rate?)"),
        ("{learning_rate: 0.1}", "training.trl.learning_rate: set by the recipe, not here: use training.learning_rate"),
        ("{num_generations: 8}", "training.trl.num_generations: set by the recipe, not here: use "
                                 "training.num_generations"),
        ("{output_dir: /tmp/x}", "training.trl.output_dir: set by the recipe, not here: use output_dir"),
        ("{reward_weights: [1, 2]}", "training.trl.reward_weights: set by the recipe, not here: use each reward's"),
    ],
)
def test_trl_passthrough_refuses_typos_and_mapped_fields(trl, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, [f"training.trl={trl}"])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("trl, expected", [
    ("{eval_strategy: steps}", "training.trl.eval_strategy: GRPOTrainer gets no eval_dataset here"),
    ("{save_strategy: best}", "training.trl.save_strategy: 'best' needs an evaluation during training"),
    # save_steps stayed transformers' 500: no checkpoint in a 28-step run.
    ("{save_strategy: steps}", "training.trl.save_strategy: set training.save_steps instead"),
    ("{do_eval: true}", "training.trl.do_eval: GRPOTrainer gets no eval_dataset here"),
    ("{eval_on_start: true}", "training.trl.eval_on_start: GRPOTrainer gets no eval_dataset here"),
    ("{fsdp: full_shard}", "training.trl.fsdp: FSDP needs distributed training"),
    # Without save_steps transformers accepts it and loads nothing; with them it refuses: refused either way.
    ("{load_best_model_at_end: true}", "training.trl.load_best_model_at_end: there is no best model to load"),
    # Checkpoints without optimizer, scheduler and RNG state: --resume went on with a fresh Adam, saying nothing.
    ("{save_only_model: true}", "training.trl.save_only_model: its checkpoints would lack the optimizer"),
    ("{resume_from_checkpoint: runs/wine/trainer/checkpoint-2}", "pass --resume to toolkit.run instead"),
    ("{push_to_hub: true}", "training.trl.push_to_hub: the run saves its adapter in <output_dir>/adapter"),
    # training.max_steps (always set) overrides it: the run trained 30 steps whatever this said.
    ("{num_train_epochs: 2}", "training.trl.num_train_epochs: training.max_steps sets the length of training"),
    # Dropped the answer and context columns: every reward scored None, the loss was 0, nothing was learned.
    ("{remove_unused_columns: true}", "training.trl.remove_unused_columns: the rewards read the dataset's other"),
    # Accepted by transformers and then unused: they would silently do nothing.
    ("{eval_steps: 5}", "training.trl.eval_steps: GRPOTrainer gets no eval_dataset here"),
    ("{metric_for_best_model: reward}", "training.trl.metric_for_best_model: there is no evaluation during training"),
    ("{greater_is_better: true}", "training.trl.greater_is_better: there is no evaluation during training"),
    ("{eval_delay: 5}", "training.trl.eval_delay: GRPOTrainer gets no eval_dataset here"),
    ("{eval_accumulation_steps: 4}", "training.trl.eval_accumulation_steps: GRPOTrainer gets no eval_dataset here"),
    ("{prediction_loss_only: true}", "training.trl.prediction_loss_only: GRPOTrainer gets no eval_dataset here"),
    ("{per_device_eval_batch_size: 4}", "in batches of eval.batch_size: set that"),
    ("{num_generations_eval: 2}", "training.trl.num_generations_eval: GRPOTrainer gets no eval_dataset here"),
    # wine.yaml's schedule is constant, which transformers builds without these kwargs.
    ("{lr_scheduler_kwargs: {num_cycles: 0.5}}",
     "training.trl.lr_scheduler_kwargs: training.lr_scheduler_type constant takes no settings"),
])
def test_trl_values_the_run_cannot_honour_are_refused(trl, expected):
    # transformers refuses them only when the trainer is built, after the base evaluation.
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, [f"training.trl={trl}"])
    assert expected in str(err.value) and "\n" not in str(err.value)
    kept = ("training.trl={eval_strategy: 'no', save_strategy: epoch, save_only_model: false, do_eval: false, "
            "remove_unused_columns: false}")
    assert load_recipe(WINE, [kept]).training.trl == {"eval_strategy": "no", "save_strategy": "epoch",
                                                      "save_only_model": False, "do_eval": False,
                                                      "remove_unused_columns": False}
    cosine = load_recipe(WINE, ["training.lr_scheduler_type=cosine",
                                "training.trl={lr_scheduler_kwargs: {num_cycles: 0.25}}"])
    assert cosine.training.trl == {"lr_scheduler_kwargs": {"num_cycles": 0.25}}
    assert load_recipe(WINE, ["training.trl={lr_scheduler_kwargs: {}, eval_steps: null}"]).training.trl
    # With training.save_steps the recipe's own strategy is "steps": saying so again changes nothing.
    assert load_recipe(WINE, ["training.save_steps=4", "training.trl={save_strategy: steps}"]).training.trl


@pytest.mark.parametrize("trl, expected", [
    # TRL lets generation_kwargs override its own sampling settings; the loss still scaled the logits by
    # training.temperature, so the replies were sampled at one temperature and scored at another.
    ("{generation_kwargs: {temperature: 0.3}}",
     "training.trl.generation_kwargs: set by the recipe, not here: temperature (use training.temperature)"),
    ("{generation_kwargs: {top_p: 0.9, max_new_tokens: 500}}",
     "top_p (use training.top_p), max_new_tokens (use training.max_completion_length)"),
    ("{generation_kwargs: '{\"max_tokens\": 500}'}", "max_tokens (use training.max_completion_length)"),
    ("{generation_kwargs: {do_sample: false}}", "training.trl.generation_kwargs: do_sample must stay true"),
    # Kept by GRPOConfig; GRPOTrainer failed on it with a traceback when built, after the base evaluation.
    ("{generation_kwargs: 5}", "training.trl.generation_kwargs: must be a mapping of generation settings"),
    ("{generation_kwargs: nojson}", "training.trl.generation_kwargs: must be a mapping of generation settings"),
    # Only TRL's sampling prompts got them: the evaluation rendered the template without.
    ("{chat_template_kwargs: {enable_thinking: false}}",
     "training.trl.chat_template_kwargs: only TRL's training prompts would get them"),
])
def test_trl_settings_that_would_override_the_recipe_or_split_train_and_eval_prompts_are_refused(trl, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, [f"training.trl={trl}"])
    assert expected in str(err.value) and "\n" not in str(err.value)
    kept = load_recipe(WINE, ["training.trl={generation_kwargs: {suppress_tokens: [3], do_sample: true}, "
                              "chat_template_kwargs: {}}"])
    assert kept.training.trl["generation_kwargs"] == {"suppress_tokens": [3], "do_sample": True}


def test_an_unquoted_no_for_a_strategy_is_taken_as_no():
    # YAML reads `save_strategy: no` as false; the refusal listed "no" among the valid values.
    recipe = load_recipe(WINE, ["training.trl={save_strategy: no, logging_strategy: no}"])
    assert recipe.training.trl == {"save_strategy": "no", "logging_strategy": "no"}


def test_warmup_under_a_constant_schedule_is_refused():
    # transformers' constant schedule never reads num_warmup_steps: the warmup would be ignored without a word.
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.warmup_steps=10"])
    assert "warmup_steps 10 does nothing under lr_scheduler_type constant; use constant_with_warmup" in str(err.value)
    assert load_recipe(WINE, ["training.warmup_steps=10", "training.lr_scheduler_type=constant_with_warmup"])


def test_an_overlong_limit_above_the_generation_limit_is_refused():
    # wine.yaml generates at most 48 tokens: a completion cut there under L = 64, B = 16 would keep its full reward.
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["rewards.4.params={max_completion_length: 64, overlong_buffer: 16}"])
    assert str(err.value).endswith(
        "rewards.4.params.max_completion_length: above training.max_completion_length (48), so a completion cut "
        "there would keep part of its reward; set it to 48 (got 64)")
    assert load_recipe(WINE, ["rewards.4.params={max_completion_length: 48, overlong_buffer: 16}"])
    assert load_recipe(WINE, ["rewards.4.params={max_completion_length: 64, overlong_buffer: 16}",
                              "training.max_completion_length=64"])


def test_trl_passthrough_names_every_bad_key():
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.trl={optim: adamw_torch, max_grad_nrm: 1, seed: 3}"])
    message = str(err.value)
    assert "training.trl.max_grad_nrm" in message and "training.trl.seed: set by the recipe" in message
    assert "training.trl.optim" not in message


def test_trl_passthrough_keeps_real_grpo_fields():
    recipe = load_recipe(WINE, ["training.trl={optim: adamw_torch, max_grad_norm: 0.1, report_to: none}"])
    assert recipe.training.trl == {"optim": "adamw_torch", "max_grad_norm": 0.1, "report_to": "none"}
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe


def test_recipe_without_trl_does_not_import_trl():
    # The check needs TRL's GRPOConfig only when training.trl has keys; an empty one must stay fast to load.
    code = ("import sys; from toolkit.recipe import load_recipe; load_recipe('recipes/wine.yaml'); "
            "print('trl' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["training.per_device_train_batch_size=6"], "set per_device_train_batch_size to 8, or num_generations to 3"),
        (["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=3"],
         "(per_device_train_batch_size × gradient_accumulation_steps = 6)"),
        (["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=3"],
         "set per_device_train_batch_size to 4"),  # 4 × 3 = 12 completions: three groups of 4
        (["training.trl={generation_batch_size: 6}"], "set training.trl.generation_batch_size to 8"),
        (["training.per_device_train_batch_size=2", "training.trl={steps_per_generation: 3}"],
         "(per_device_train_batch_size × steps_per_generation = 6)"),
        # TRL also splits the generation batch into whole training batches of 8: 12 would fail there.
        (["training.per_device_train_batch_size=8", "training.trl={generation_batch_size: 12}"],
         "and by per_device_train_batch_size (8)"),
        (["training.per_device_train_batch_size=8", "training.trl={generation_batch_size: 12}"],
         "set training.trl.generation_batch_size to 16"),
        (["training.trl={generation_batch_size: '10'}"], "set training.trl.generation_batch_size to 12"),
    ],
)
def test_generation_batch_error_explains_the_fix(overrides, fix):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, overrides)
    message = str(err.value)
    assert "must be divisible by num_generations (4)" in message and "one GRPO group" in message
    assert fix in message


def test_generation_batch_size_and_steps_per_generation_together_are_refused():
    with pytest.raises(RecipeError, match="sets both generation_batch_size and steps_per_generation"):
        load_recipe(WINE, ["training.trl={generation_batch_size: 8, steps_per_generation: 2}"])


def test_trl_values_are_checked_against_grpo_config_types():
    # YAML reads 1e-2 as a string; GRPOConfig would keep it until the optimizer's first step fails on it.
    recipe = load_recipe(WINE, ["training.trl={weight_decay: 1e-2, max_grad_norm: '0.1', optim: adamw_torch}"])
    assert recipe.training.trl == {"weight_decay": 0.01, "max_grad_norm": 0.1, "optim": "adamw_torch"}
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, ["training.trl={max_grad_norm: abc, save_total_limit: 2.5}"])
    message = str(err.value)
    assert "training.trl.max_grad_norm: Input should be a valid number" in message
    assert "(trl.GRPOConfig.max_grad_norm takes a number) (got 'abc')" in message
    assert "training.trl.save_total_limit: Input should be a valid integer" in message
    # Only numbers and booleans are converted: transformers' other hints are narrower than what it accepts.
    recipe = load_recipe(WINE, ["training.trl={fsdp: false, top_k: null, gradient_checkpointing_kwargs: {}}"])
    assert recipe.training.trl == {"fsdp": False, "top_k": None, "gradient_checkpointing_kwargs": {}}


def test_cli_reports_a_trl_typo_in_one_line_before_loading_anything():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", "training.trl={optimm: adamw_torch}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "training.trl.optimm: not a trl.GRPOConfig field (did you mean 'optim'?)" in line
    assert "backend" not in proc.stderr and "evaluating" not in proc.stderr  # nothing was selected or loaded


@pytest.mark.parametrize("name", ["wine reviews", "ab", "a..b", "_wine", "192.168.1.1", "vin-é"])
def test_collection_names_chroma_refuses_fail_in_the_recipe(name):
    # Before the data loads and the embedder runs, with the field named, not as a chromadb traceback after.
    with pytest.raises(RecipeError, match=r"retrieval\.collection: must .*Chroma's rule"):
        load_recipe(WINE, [f"retrieval.collection={name}"])
    assert load_recipe(WINE, ["retrieval.collection=wine.v2-x"]).retrieval.collection == "wine.v2-x"


@pytest.mark.parametrize("value", ["5", "all", "[q_proj, 3]", "[]"])
def test_target_modules_error_is_one_message_without_pydantic_type_names(value):
    with pytest.raises(RecipeError) as err:
        load_recipe(WINE, [f"training.lora.target_modules={value}", "training.lora.layers_to_transform=null"])
    message = str(err.value)
    assert "training.lora.target_modules: must be a list of module names (e.g. [q_proj, v_proj]) or 'all-linear'" \
        in message
    assert "literal[" not in message and "list[str]" not in message and message.count(";") == 0


def test_a_blank_system_prompt_is_allowed():
    """No system message is a choice (prompt._blank_ok); every other text or path field refuses a blank value."""
    assert load_recipe(WINE, ["prompt.system=''"]).prompt.system == ""


def test_a_relative_path_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # A recipe kept beside its data and run from the project root, as the README's commands are, said only
    # "data.train: file not found: train.jsonl", not where it had looked nor that the recipe's folder has it.
    own = tmp_path / "mine"
    own.mkdir()
    (own / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    wine = ROOT / "data" / "wine"
    recipe = _write(own / "r.yaml", f"extends: {WINE}\ndata: {{corpus: [{wine / 'docs.jsonl'}], train: train.jsonl, "
                                    f"eval: {wine / 'eval.jsonl'}}}\n")
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(err.value).endswith(f"data.train: file not found: train.jsonl (got 'train.jsonl') (relative paths in "
                                   f"a recipe are read from the folder the command runs in, {root}; the recipe's "
                                   f"folder {own} has train.jsonl: run from there, or write the paths from {root})")
    with pytest.raises(RecipeError) as err:  # found nowhere: where it was looked for, no more
        load_recipe(recipe, ["data.train=nope.jsonl"])
    assert str(err.value).endswith(f"(relative paths in a recipe are read from the folder the command runs in, {root})")
