"""Custom rewards named in a recipe, and the BoundReward guard: a reward that raises, returns NaN/inf or the wrong
number of values stops the run with a RewardError naming the reward and the sample."""

import re
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.recipe import RecipeError, load_recipe
from toolkit.rewards import RewardError, accepted_params, build_reward

WINE = "recipes/wine.yaml"
MODULE = """
import collections.abc
import math
import typing
from typing import List, Mapping, Optional

def scaled(completions, *, scale=1.0, answer=None, **kwargs):
    return [scale * float(c == "yes") for c in completions]

def needs_threshold(completions, threshold, **kwargs):
    return [float(len(c) > threshold) for c in completions]

def positional(completions, bonus=0.5, **kwargs):
    return [bonus] * len(completions)

def boom(completions, **kwargs):
    return [1.0 / (c != "bad") for c in completions]

def batch_only(completions, **kwargs):
    if len(completions) > 1:
        raise RuntimeError("too many")
    return [1.0] * len(completions)

def returns(completions, *, values=None, **kwargs):
    return list(values)

def tuple_default(completions, *, words=("yes",), **kwargs):
    assert isinstance(words, tuple), type(words)
    return [float(c in words) for c in completions]

def top(completions, *, k=2, **kwargs):
    return [float(i < k) for i in range(len(completions))]

def top_typed(completions, *, k: int = 2, cap: float = 3, **kwargs):
    return [float(i < min(k, cap)) for i in range(len(completions))]

def optional(completions, *, u: int | None = 3, y: float | None = 1.0, o: Optional[int] = None, k: int, **kwargs):
    return [float(u or 0) + (y or 0) + (o or 0) + k] * len(completions)

def typed(completions, *, strict: bool, thr: float | None = None, words: list[str] | None = None,
          tags: Optional[List[str]] = None, label: Optional[str] = None, free=None, table: dict | None = None,
          **kwargs):
    return [float(strict) + float(len(c) > (thr or 0)) + len(words or []) for c in completions]

def exits(completions, **kwargs):
    import sys
    sys.exit(0)

def echo(completions, **kwargs):
    return kwargs["value"]

def keyword_only(*, completions, **kwargs):
    return [1.0] * len(completions)

def no_kwargs(completions):
    return [0.0] * len(completions)

def wrong_name(texts, **kwargs):
    return [0.0] * len(texts)

def only_kwargs(**kwargs):
    return [0.0] * len(kwargs["completions"])

async def coroutine(completions, **kwargs):
    return [0.0] * len(completions)

class Scorer:
    def __init__(self, completions, **kwargs):
        pass

NOT_CALLABLE = 3

def items(completions, *, words: list[str] | None = None, counts: List[int] = (1,),
          scores: list[float] = (0.0, math.inf), flags: Optional[list[bool]] = None,
          objs: list[Scorer] | None = None, mixed: list[int | str] | None = None,
          pair: tuple[str, ...] = ("a",), weights: Mapping[str, float] | None = None,
          abc_map: collections.abc.Mapping | None = None, plain_map: typing.Mapping = None, **kwargs):
    return [0.0] * len(completions)

def tuples(completions, words: tuple[str, ...], *, weights: tuple[float, ...] | None = None, **kwargs):
    return [float(isinstance(words, tuple))] * len(completions)
"""


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(MODULE))
    return path


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    name = f"custom_rewards_{uuid.uuid4().hex[:8]}"  # a fresh module per test: sys.modules keeps imports
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ------------------------------------------------------------------------------------------------------ loading
def test_module_and_file_rewards_take_params_as_keywords(rewards_file, rewards_module):
    for target in (f"{rewards_file}:scaled", f"{rewards_module}:scaled"):
        reward = build_reward(target, {"scale": 0.5})
        assert reward.__name__ == "scaled"
        assert reward(["yes", "no"], answer=["a", "b"], trainer_state=None) == [0.5, 0.0]
        assert accepted_params(target) == ["scale"]
    assert build_reward(f"{rewards_file}:positional", {"bonus": 2})(["x"]) == [2.0]
    assert build_reward(f"{rewards_file}:needs_threshold", {"threshold": 2})(["abc", "a"]) == [1.0, 0.0]
    assert build_reward(f"{rewards_file}:keyword_only")(["a", "b"]) == [1.0, 1.0]


def test_a_tuple_default_takes_a_yaml_list(rewards_file):
    # YAML gives lists; the function still gets the tuple its default promises.
    reward = build_reward(f"{rewards_file}:tuple_default", {"words": ["yes", "si"]})
    assert reward.params == {"words": ("yes", "si")}
    assert reward(["si", "no", "yes"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=re.escape("param 'words' must be a list, got 'si'")):
        build_reward(f"{rewards_file}:tuple_default", {"words": "si"})


def test_a_file_is_loaded_once(rewards_file):
    first = build_reward(f"{rewards_file}:scaled").fn
    assert build_reward(f"{rewards_file}:scaled").fn is first


@pytest.mark.parametrize(("target", "params", "message"), [
    ("no_such_module_xyz:f", {}, "custom reward 'no_such_module_xyz:f': cannot import 'no_such_module_xyz': "
                                 "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("{file}:missing", {}, "has no attribute 'missing'"),
    ("{file}:NOT_CALLABLE", {}, "NOT_CALLABLE is a int, not a function"),
    ("{file}:Scorer", {}, "Scorer is a type, not a function"),
    ("{file}:no_kwargs", {}, "no_kwargs(completions) must accept `completions` and `**kwargs`"),
    ("{file}:wrong_name", {}, "must accept `completions` and `**kwargs`"),
    ("{file}:only_kwargs", {}, "must accept `completions` and `**kwargs`"),
    ("{file}:coroutine", {}, "async reward functions are not supported"),
    ("{file}:scaled", {"scal": 2},
     "reward '{file}:scaled': unknown param 'scal'; did you mean 'scale'? (accepted: scale)"),
    ("{file}:scaled", {"answer": "x"}, "unknown param 'answer' (accepted: scale)"),
    ("{file}:scaled", {"scale": "2"}, "param 'scale' must be a number, got '2'"),
    ("{file}:top", {"k": 2.5}, "reward '{file}:top': param 'k' must be an integer, got 2.5"),
    ("{file}:top", {"k": 2.0}, "param 'k' must be an integer, got 2.0"),
    ("{file}:top_typed", {"k": 1.5}, "param 'k' must be an integer, got 1.5"),
    ("{file}:optional", {"k": 1, "u": 2.5}, "param 'u' must be an integer, got 2.5"),
    ("{file}:optional", {"k": 1, "o": 2.5}, "param 'o' must be an integer, got 2.5"),
    ("{file}:optional", {"k": 2.5}, "param 'k' must be an integer, got 2.5"),
    ("{file}:optional", {"k": None}, "param 'k' must be an integer, got None"),
    ("{file}:optional", {"k": 1, "y": "x"}, "param 'y' must be a number, got 'x'"),
    # Checked by annotation (alone, `| None` or Optional): "0.5" failed mid-run, "false" was true, 5 a list.
    ("{file}:typed", {"strict": "false"}, "reward '{file}:typed': param 'strict' must be a bool, got 'false'"),
    ("{file}:typed", {"strict": "no"}, "param 'strict' must be a bool, got 'no'"),
    ("{file}:typed", {"strict": 1}, "param 'strict' must be a bool, got 1"),
    ("{file}:typed", {"strict": None}, "param 'strict' must be a bool, got None"),
    ("{file}:typed", {"strict": True, "thr": "0.5"}, "reward '{file}:typed': param 'thr' must be a number, got '0.5'"),
    ("{file}:typed", {"strict": True, "thr": True}, "param 'thr' must be a number, got True"),
    ("{file}:typed", {"strict": True, "words": 5}, "param 'words' must be a list, got 5"),
    ("{file}:typed", {"strict": True, "words": "yes"}, "param 'words' must be a list, got 'yes'"),
    ("{file}:typed", {"strict": True, "tags": "a"}, "param 'tags' must be a list, got 'a'"),
    ("{file}:typed", {"strict": True, "label": 3}, "param 'label' must be a string, got 3"),
    # A dict param took a list, a float param nan or inf: both failed only once the reward was called.
    ("{file}:typed", {"strict": True, "table": [1]}, "reward '{file}:typed': param 'table' must be a mapping, got [1]"),
    ("{file}:typed", {"strict": True, "table": "a: 1"}, "param 'table' must be a mapping, got 'a: 1'"),
    ("{file}:typed", {"strict": True, "thr": float("nan")}, "param 'thr' must be a finite number, got nan"),
    ("{file}:top_typed", {"cap": float("inf")}, "param 'cap' must be a finite number, got inf"),
    ("{file}:optional", {"k": 1, "y": -float("inf")}, "param 'y' must be a finite number, got -inf"),
    ("{file}:scaled", {"scale": float("nan")}, "param 'scale' must be a finite number, got nan"),
    ("{file}:needs_threshold", {}, "reward '{file}:needs_threshold': missing param threshold"),
    ("{dir}/nope.py:f", {}, "file not found: {dir}/nope.py"),
    ("{file}:", {}, "expected 'package.module:function' or 'path/to/file.py:function'"),
    (":scaled", {}, "expected 'package.module:function'"),
    ("{file}:not an identifier", {}, "expected 'package.module:function'"),
])
def test_custom_reward_errors(rewards_file, target, params, message):
    fill = {"file": rewards_file, "dir": rewards_file.parent}
    with pytest.raises(ValueError, match=re.escape(message.format(**fill))) as err:
        build_reward(target.format(**fill), params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("source", "message"), [
    ("def f(completions, **kwargs):\n    return [\n", "cannot import {path}: SyntaxError"),
    ("raise RuntimeError('broken\\nat import')\n", "cannot import {path}: RuntimeError: broken at import"),
])
def test_a_broken_file_is_one_line(tmp_path, source, message):
    path = tmp_path / f"broken_{uuid.uuid4().hex[:6]}.py"
    path.write_text(source)
    with pytest.raises(ValueError, match=re.escape(message.format(path=path))) as err:
        build_reward(f"{path}:f")
    assert "\n" not in str(err.value)


EXIT_HINT = "; a reward file's script code belongs under `if __name__ == '__main__':`"


@pytest.mark.parametrize(("source", "message"), [
    ("import sys\nsys.exit(0)\n", "cannot import {what}: called sys.exit(0)" + EXIT_HINT),
    ("import sys\nsys.exit('no key')\n", "cannot import {what}: called sys.exit('no key')" + EXIT_HINT),
    # argparse prints its usage and reason (left on the console, above the error), then exits 2.
    ("import argparse\nargparse.ArgumentParser(prog='score').parse_args(['--nope'])\n",
     "cannot import {what}: called sys.exit(2)" + EXIT_HINT),
    ("print('starting')\nraise SystemExit\n", "called sys.exit(None)" + EXIT_HINT),
], ids=["exit_0", "exit_message", "argparse", "bare_exit"])
@pytest.mark.parametrize("form", ["file", "module"])
def test_an_exit_at_import_is_a_one_line_error(tmp_path, monkeypatch, capsys, source, message, form):
    # SystemExit is no Exception: it went past the import's guard and ended the run with the file's status (0: no
    # output, nothing done; 2: the file's own usage text).
    module = f"exits_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{module}.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    what = path if form == "file" else repr(module)
    with pytest.raises(ValueError, match=re.escape(message.format(what=what))) as err:
        build_reward(f"{path if form == 'file' else module}:f")
    assert "\n" not in str(err.value)


def test_an_exit_at_import_fails_the_recipe_load(tmp_path):
    path = tmp_path / "exits_at_import.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(RecipeError, match=re.escape(f"rewards.5: custom reward '{path}:f': cannot import {path}: "
                                                    "called sys.exit(0)")):
        load_recipe(WINE, [f"rewards.5={{name: '{path}:f'}}"])


def test_ctrl_c_at_import_still_stops_and_output_is_kept(tmp_path, capsys):
    path = tmp_path / f"slow_{uuid.uuid4().hex[:6]}.py"
    path.write_text("import sys\nprint('loading')\nprint('a warning', file=sys.stderr)\nraise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        build_reward(f"{path}:f")
    assert capsys.readouterr() == ("loading\n", "a warning\n")
    # Not left half-run in sys.modules: the next load executes the file again.
    path.write_text("print('loaded')\ndef f(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    assert build_reward(f"{path}:f")(["a"]) == [1.0]
    assert capsys.readouterr().out == "loaded\n"


def test_a_module_may_reconfigure_or_keep_the_real_streams_at_import(tmp_path, capsys):
    # The streams were swapped for StringIO buffers during the import: reconfigure() and fileno() failed, and a
    # stream kept at import wrote into a discarded buffer.
    path = tmp_path / f"streams_{uuid.uuid4().hex[:6]}.py"
    path.write_text("import sys\nsys.stdout.reconfigure(errors='replace')\nERR = sys.stderr\n"
                    "def f(completions, **kwargs):\n    print('scored', file=ERR)\n"
                    "    return [1.0] * len(completions)\n")
    assert build_reward(f"{path}:f")(["a"]) == [1.0]
    assert "scored" in capsys.readouterr().err


def test_recipe_checks_custom_rewards_at_load(rewards_file):
    overrides = [f"rewards.0.name={rewards_file}:scaled", "rewards.0.params=null", "rewards.0.params={scale: 2.0}"]
    recipe = load_recipe(WINE, overrides)  # null first: a mapping override merges into wine's answer_match params
    assert recipe.rewards[0].key == "scaled"  # the function's name, not the whole path
    assert recipe.rewards[0].build()(["yes"]) == [2.0]
    with pytest.raises(RecipeError, match=r"rewards\.0: custom reward .*has no attribute 'nope'") as err:
        load_recipe(WINE, [f"rewards.0.name={rewards_file}:nope"])
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match=r"rewards\.1: reward .*unknown param 'mode' \(accepted: scale\)"):
        load_recipe(WINE, [f"rewards.1.name={rewards_file}:scaled"])  # wine's format params stay behind


def test_two_custom_rewards_with_one_name_need_a_label(rewards_file, rewards_module):
    overrides = [f"rewards.0.name={rewards_file}:scaled", "rewards.0.params=null", "rewards.0.params={}",
                 f"rewards.4.name={rewards_module}:scaled", "rewards.4.params=null", "rewards.4.params={}"]
    with pytest.raises(RecipeError, match="reward 'scaled' is listed twice"):
        load_recipe(WINE, overrides)
    assert load_recipe(WINE, [*overrides, "rewards.4.label=scaled_again"]).rewards[4].key == "scaled_again"


# ------------------------------------------------------------------------------------------------- the guard
def test_an_exception_names_the_reward_and_the_sample(rewards_file):
    reward = build_reward(f"{rewards_file}:boom", label="my_boom")
    message = r"reward 'my_boom' raised ZeroDivisionError: [\w ]+ on sample 2 of 3 \(completion 'bad'\)$"
    with pytest.raises(RewardError, match=message) as err:
        reward(["ok", "fine", "bad"], answer=["a", "b", "c"], trainer_state=object())
    assert isinstance(err.value, RuntimeError) and isinstance(err.value.__cause__, ZeroDivisionError)


def test_a_batch_level_exception_says_so(rewards_file):
    with pytest.raises(RewardError, match=re.escape("reward 'batch_only' raised RuntimeError: too many on a batch "
                                                    "of 2 completions (no single sample reproduces it)")):
        build_reward(f"{rewards_file}:batch_only")(["a", "b"])


def test_sys_exit_in_a_reward_is_a_reward_error(rewards_file):
    # SystemExit is no Exception: it went past the guard and ended a training run with exit 0 and no report.
    with pytest.raises(RewardError, match=re.escape("reward 'exits' called sys.exit(0); a reward must return its "
                                                    "scores (or raise)")):
        build_reward(f"{rewards_file}:exits")(["a", "b"])


@pytest.mark.parametrize(("values", "message"), [
    ([0.5, float("nan"), 1.0], "reward 'returns' returned nan for sample 1 of 3 (completion 'b')"),
    ([float("inf"), 0.0, 0.0], "returned inf for sample 0 of 3 (completion 'a')"),
    ([0.0, 0.0, -float("inf")], "returned -inf for sample 2 of 3"),
    ([0.0, "0.5", 0.0], "returned a str for sample 1 of 3"),
    ([0.0, [1.0], 0.0], "returned a list for sample 1 of 3"),
    ([0.0, np.float32("nan"), 0.0], "returned nan for sample 1 of 3"),
    ([0.0, 0.0, 10**400], "returned inf for sample 2 of 3 (completion 'c'); rewards must be finite numbers or None"),
    ([0.0, 1.0], "reward 'returns' returned 2 values for 3 completions"),
    ([0.0] * 4, "returned 4 values for 3 completions"),
    ([0.0], "reward 'returns' returned 1 value for 3 completions"),
])
def test_bad_values_name_the_reward_and_the_sample(rewards_file, values, message):
    with pytest.raises(RewardError, match=re.escape(message)) as err:
        build_reward(f"{rewards_file}:returns", {"values": values})(["a", "b", "c"])
    assert "\n" not in str(err.value)


# 0-d tensors and arrays have a __len__ that raises TypeError: a scalar, not a list.
@pytest.mark.parametrize("value", ["0.5", {"a": 1.0}, 0.5, None, torch.tensor(1.0), np.array(0.5)])
def test_a_non_list_result_is_an_error(rewards_file, value):
    with pytest.raises(RewardError, match=r"reward 'echo' returned a \w+, expected a list of 1 float$"):
        build_reward(f"{rewards_file}:echo")(["a"], value=value)


@pytest.mark.parametrize(("values", "completions", "message"), [
    ([], ["a"], "reward 'returns' returned 0 values for 1 completion$"),
    ([0.0, 1.0], ["a"], "returned 2 values for 1 completion$"),
    ([0.0], ["a", "b"], "returned 1 value for 2 completions$"),
])
def test_counts_in_messages_are_singular_for_one(rewards_file, values, completions, message):
    with pytest.raises(RewardError, match=message):
        build_reward(f"{rewards_file}:returns", {"values": values})(completions)
    if len(completions) == 1:  # a raise no single sample reproduces, on a batch of one
        calls = iter([RuntimeError("flaky"), [1.0]])

        def flaky(completions, **kwargs):
            result = next(calls)
            if isinstance(result, Exception):
                raise result
            return result

        reward = build_reward(f"{rewards_file}:returns")
        reward.fn = flaky
        with pytest.raises(RewardError, match=re.escape("raised RuntimeError: flaky on a batch of 1 completion (no")):
            reward(completions)


def test_none_and_other_numbers_pass(rewards_file):
    values = [None, 1, True, np.float64(0.25), torch.tensor(-2.5), 0.5]
    scores = build_reward(f"{rewards_file}:returns", {"values": values})(["x"] * 6)
    assert scores == [None, 1.0, 1.0, 0.25, -2.5, 0.5]  # custom rewards may leave [0, 1]
    assert all(s is None or type(s) is float for s in scores)
    assert build_reward(f"{rewards_file}:echo")(["a", "b"], value=np.array([0.5, 1.0])) == [0.5, 1.0]


def test_long_completions_are_cut_in_the_message(rewards_file):
    with pytest.raises(RewardError, match=re.escape("(completion '" + "b" * 60 + "'…)")):
        build_reward(f"{rewards_file}:returns", {"values": [float("nan")]})([[{"role": "assistant",
                                                                              "content": "b" * 500}]])


def test_a_number_param_takes_inf_when_that_is_its_default(tmp_path):
    path = tmp_path / f"unbounded_{uuid.uuid4().hex[:6]}.py"
    path.write_text("import math\ndef f(completions, *, cap: float = math.inf, top=float('inf'), thr=math.nan, "
                    "**kwargs):\n    return [min(cap, top, 1.0)] * len(completions)\n")
    assert build_reward(f"{path}:f", {"cap": float("inf"), "top": float("inf")})(["a"]) == [1.0]
    assert build_reward(f"{path}:f", {"thr": float("nan")})(["a"]) == [1.0]  # nan != nan, yet it is the default
    default = "must be a finite number or its default, inf, got"
    with pytest.raises(ValueError, match=re.escape(f"param 'cap' {default} nan")):
        build_reward(f"{path}:f", {"cap": float("nan")})
    with pytest.raises(ValueError, match=re.escape(f"param 'top' {default} -inf")):
        build_reward(f"{path}:f", {"top": -float("inf")})


def test_a_recipe_with_a_bad_dict_or_float_param_fails_at_load(tmp_path):
    path = tmp_path / f"params_{uuid.uuid4().hex[:6]}.py"
    path.write_text("def f(completions, *, d: dict = None, x: float = 1.0, **kwargs):\n"
                    "    return [float(x)] * len(completions)\n")
    assert load_recipe(WINE, [f"rewards.5={{name: '{path}:f', params: {{d: {{a: 1}}, x: 2}}}}"]).rewards[5]
    for params, message in (("{d: [1]}", "param 'd' must be a mapping, got [1]"),
                            ("{x: .nan}", "param 'x' must be a finite number, got nan"),
                            ("{x: .inf}", "param 'x' must be a finite number, got inf")):
        with pytest.raises(RecipeError, match=re.escape(f"rewards.5: reward '{path}:f': {message}")) as err:
            load_recipe(WINE, [f"rewards.5={{name: '{path}:f', params: {params}}}"])
        assert "\n" not in str(err.value)


def test_a_float_annotated_param_with_an_int_default_takes_any_number(rewards_file):
    assert build_reward(f"{rewards_file}:top_typed", {"cap": 1.5, "k": 3})(["a", "b", "c"]) == [1.0, 1.0, 0.0]
    assert build_reward(f"{rewards_file}:top", {"k": 1})(["a", "b"]) == [1.0, 0.0]


def test_annotated_params_take_their_kind_and_others_anything(rewards_file):
    reward = build_reward(f"{rewards_file}:typed", {"strict": False, "thr": 1, "words": ["a"], "tags": [],
                                                    "label": "x", "free": [float("nan")], "table": {"a": [1]}})
    assert reward(["a", "bb"]) == [1.0, 2.0]  # an int is a fine float; `free` is not checked
    assert build_reward(f"{rewards_file}:typed", {"strict": True, "thr": None, "words": None})(["a"]) == [2.0]


def test_annotations_are_checked_as_text_too(tmp_path):
    # Under `from __future__ import annotations` every annotation is a string.
    path = tmp_path / f"postponed_{uuid.uuid4().hex[:6]}.py"
    path.write_text("from __future__ import annotations\nimport typing\n\n"
                    "def f(completions, *, thr: float | None = None, words: typing.Optional[typing.List[str]] = None,"
                    " n: typing.Union[int, None] = None, **kwargs):\n    return [0.0] * len(completions)\n")
    assert build_reward(f"{path}:f", {"thr": 0.5, "words": ["a"], "n": 2}).params["thr"] == 0.5
    for params, message in [({"thr": "0.5"}, "param 'thr' must be a number, got '0.5'"),
                            ({"words": 5}, "param 'words' must be a list, got 5"),
                            ({"n": 2.5}, "param 'n' must be an integer, got 2.5")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_reward(f"{path}:f", params)


@pytest.mark.parametrize(("params", "message"), [
    # Only "a list" was checked: ['a', 3] for list[str] failed mid-run, wherever the reward used the 3.
    ({"words": ["a", 3]}, "reward '{file}:items': param 'words' must be a list of strings, got ['a', 3] (item 2: 3)"),
    ({"counts": [1, True]}, "param 'counts' must be a list of integers, got [1, True] (item 2: True)"),
    ({"counts": [1, 2.0]}, "param 'counts' must be a list of integers, got [1, 2.0] (item 2: 2.0)"),
    ({"scores": [0.5, "1"]}, "param 'scores' must be a list of numbers, got [0.5, '1'] (item 2: '1')"),
    ({"scores": [True]}, "param 'scores' must be a list of numbers, got [True] (item 1: True)"),
    ({"scores": [float("nan")]}, "param 'scores' must be a list of finite numbers, got [nan] (item 1: nan)"),
    ({"scores": [-float("inf")]}, "param 'scores' must be a list of finite numbers, got [-inf] (item 1: -inf)"),
    ({"flags": [True, "yes"]}, "param 'flags' must be a list of bools, got [True, 'yes'] (item 2: 'yes')"),
    ({"pair": ["a", 1]}, "param 'pair' must be a list of strings, got ['a', 1] (item 2: 1)"),  # a tuple default
    ({"objs": 5}, "param 'objs' must be a list, got 5"),
    # Mapping was no kind at all: a list or a string went through.
    ({"weights": [1]}, "reward '{file}:items': param 'weights' must be a mapping, got [1]"),
    ({"weights": {"a": 1, "b": "x"}}, "param 'weights' must be a mapping to numbers, got {'a': 1, 'b': 'x'} "
                                      "(key 'b': 'x')"),
    ({"weights": {"a": float("nan")}}, "param 'weights' must be a mapping to finite numbers, got {'a': nan} "
                                       "(key 'a': nan)"),
    ({"abc_map": "a: 1"}, "param 'abc_map' must be a mapping, got 'a: 1'"),
    ({"plain_map": 3}, "param 'plain_map' must be a mapping, got 3"),
])
def test_list_items_and_mappings_are_checked(rewards_file, params, message):
    with pytest.raises(ValueError, match=re.escape(message.replace("{file}", str(rewards_file)))) as err:
        build_reward(f"{rewards_file}:items", params)
    assert "\n" not in str(err.value)


def test_good_list_items_and_unreadable_item_kinds_pass(rewards_file):
    params = {"words": ["a"], "counts": [1, 2], "scores": [1, 0.5, float("inf")], "flags": [False], "pair": ["a", "b"],
              "objs": [1, "x"], "mixed": [1, "a", 2.5], "weights": {"a": 1, "b": 0.5}, "abc_map": {"a": "x"},
              "plain_map": {}}
    reward = build_reward(f"{rewards_file}:items", params)  # inf is among the default's scores: taken back
    assert reward.params["pair"] == ("a", "b") and reward.params["counts"] == (1, 2)  # tuple defaults still convert
    assert reward(["a"]) == [0.0]
    assert build_reward(f"{rewards_file}:items", {"words": None, "weights": None, "scores": []}).params["scores"] == ()


def test_a_tuple_annotated_param_is_checked_without_a_tuple_default(rewards_file):
    # Only a tuple default made a param a list: `words: tuple[str, ...]` (required) or `| None = None` took 5.
    name = f"{rewards_file}:tuples"
    for params, message in [({"words": 5}, "param 'words' must be a list, got 5"),
                            ({"words": [1]}, "param 'words' must be a list of strings, got [1] (item 1: 1)"),
                            ({"words": ["a"], "weights": ["a"]}, "param 'weights' must be a list of numbers"),
                            ({"words": ["a"], "weights": 5}, "param 'weights' must be a list, got 5")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_reward(name, params)
    reward = build_reward(name, {"words": ["a", "b"], "weights": [0.5]})
    assert reward.params == {"words": ("a", "b"), "weights": (0.5,)} and reward(["x"]) == [1.0]  # YAML list → tuple


def test_list_items_and_mappings_are_checked_as_text_too(tmp_path):
    path = tmp_path / f"postponed_items_{uuid.uuid4().hex[:6]}.py"
    path.write_text("from __future__ import annotations\nimport collections.abc\nimport typing\n\n"
                    "def f(completions, *, words: typing.Optional[typing.List[str]] = None, "
                    "m: collections.abc.Mapping[str, float] | None = None, t: typing.Mapping[str, int] = None, "
                    "**kwargs):\n    return [0.0] * len(completions)\n")
    assert build_reward(f"{path}:f", {"words": ["a"], "m": {"x": 0.5}, "t": {"y": 2}}).params["m"] == {"x": 0.5}
    for params, message in [({"words": ["a", 1]}, "param 'words' must be a list of strings, got ['a', 1] (item 2: 1)"),
                            ({"m": [1]}, "param 'm' must be a mapping, got [1]"),
                            ({"m": {"x": "0.5"}}, "param 'm' must be a mapping to numbers, got {'x': '0.5'} (key 'x'"),
                            ({"t": {"y": 2.5}}, "param 't' must be a mapping to integers, got {'y': 2.5} (key 'y'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_reward(f"{path}:f", params)


def test_optional_params_take_null_and_their_kind(rewards_file):
    reward = build_reward(f"{rewards_file}:optional", {"k": 1, "u": None, "y": None, "o": 2})
    assert reward(["a"]) == [3.0]
    assert build_reward(f"{rewards_file}:optional", {"k": 1, "u": 4, "y": 0.5})(["a"]) == [5.5]


def test_a_reward_file_under_home_is_found(rewards_file, monkeypatch):
    monkeypatch.setenv("HOME", str(rewards_file.parent))
    assert build_reward(f"~/{rewards_file.name}:scaled", {"scale": 2.0})(["yes", "no"]) == [2.0, 0.0]


# ------------------------------------------------------------------------------------------------- source code
def test_a_local_helper_module_counts_as_the_rewards_code(tmp_path, monkeypatch):
    # checkpoints.eval_key hashed the reward's own file only: on --resume, an edit to a helper it imports (cr.py's
    # `import crhelp`, next to it) kept the saved base columns, and the edit was credited to training.
    import json

    from toolkit.rewards.custom import source_digest, source_files

    tag = uuid.uuid4().hex[:8]
    folder = tmp_path.resolve()
    helper = folder / f"crhelp_{tag}.py"
    helper.write_text("V = 0.5\n")
    vendored = folder / "venv" / "lib" / f"vendored_{tag}.py"  # a virtual environment inside the folder
    vendored.parent.mkdir(parents=True)
    vendored.write_text("")
    monkeypatch.syspath_prepend(str(vendored.parent))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr("sys.prefix", str(folder / "venv"))
    reward = folder / f"cr_{tag}.py"
    reward.write_text(f"import json\nimport numpy\nimport vendored_{tag}\nimport crhelp_{tag}\n"
                      f"def f(completions, **kwargs):\n    return [crhelp_{tag}.V] * len(completions)\n")
    (folder / f"unused_{tag}.py").write_text("")  # never imported: no part of it
    name = f"{reward}:f"
    assert build_reward(name)(["a"]) == [0.5]
    assert source_files(name) == [reward, helper]  # not the standard library, numpy or the virtual environment
    digest = source_digest(name)
    assert len(digest) == 64 and source_digest(name) == digest
    helper.write_text("V = 0.75\n")
    assert source_digest(name) != digest
    digest = source_digest(name)
    reward.write_text(reward.read_text() + "# edited\n")
    assert source_digest(name) != digest

    # `package.module:function`: the modules loaded from its top-level package, not the folder beside it.
    package = folder / f"pkg_{tag}"
    (package / "sub").mkdir(parents=True)
    for file in ("__init__.py", "sub/__init__.py"):
        (package / file).write_text("")
    (package / "sub" / "util.py").write_text("W = 1.0\n")
    (package / "sub" / "mod.py").write_text(f"from pkg_{tag} import sub\nfrom pkg_{tag}.sub import util\n"
                                            f"import crhelp_{tag}\n"
                                            "def f(completions, **kwargs):\n    return [util.W] * len(completions)\n")
    name = f"pkg_{tag}.sub.mod:f"
    assert build_reward(name)(["a"]) == [1.0]
    assert source_files(name) == [package / "__init__.py", package / "sub" / "__init__.py",
                                  package / "sub" / "mod.py", package / "sub" / "util.py"]
    digest = source_digest(name)
    (package / "sub" / "util.py").write_text("W = 2.0\n")
    assert source_digest(name) != digest
    # An installed module (here the standard library's): its own file alone, whatever else of it is loaded.
    assert source_files("json.decoder:JSONDecoder") == [Path(json.decoder.__file__).resolve()]
    assert source_files("no_such_module_xyz:f") == [] and source_digest("no_such_module_xyz:f") == ""


@pytest.mark.parametrize("form", ["file", "module"])
def test_the_digest_survives_moving_the_folder(tmp_path, monkeypatch, form):
    # The paths hashed were absolute: a project folder moved between a run and its --resume changed every custom
    # reward's digest, and the evaluation was redone for nothing.
    import sys

    from toolkit.rewards.custom import source_digest

    tag = uuid.uuid4().hex[:8]
    helper, package = f"movehelp_{tag}", f"movepkg_{tag}"
    digests = []
    for place in ("before", "after/moved"):
        folder = (tmp_path / place).resolve()
        (folder / package).mkdir(parents=True)
        (folder / f"{helper}.py").write_text("V = 0.5\n")
        (folder / package / "__init__.py").write_text("")
        code = f"import {helper}\ndef f(completions, **kwargs):\n    return [{helper}.V] * len(completions)\n"
        (folder / "reward.py").write_text(code)
        (folder / package / "mod.py").write_text(code.replace(f"import {helper}", f"from {package} import {helper}"))
        (folder / package / f"{helper}.py").write_text("V = 0.5\n")
        # Another process after the move: nothing of the first folder's is imported any more.
        for module in [m for m in sys.modules if helper in m or package in m]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.syspath_prepend(str(folder))
        name = f"{folder / 'reward.py'}:f" if form == "file" else f"{package}.mod:f"
        assert build_reward(name)(["a"]) == [0.5]
        digests.append(source_digest(name))
    assert len(digests[0]) == 64 and digests[0] == digests[1]


@pytest.mark.parametrize(("source", "message"), [
    # TRL fills it in training, but the base evaluation (before training) and `python -m toolkit.rewards` do not:
    # the reward failed there with a TypeError, after the policy model loaded and generated.
    ("def f(completions, completion_ids, **kwargs):\n    return [float(len(i)) for i in completion_ids]\n",
     "parameter 'completion_ids' needs a default (None): only TRL's training passes it"),
    ("def f(completions, trainer_state, **kwargs):\n    return [0.0] * len(completions)\n",
     "parameter 'trainer_state' needs a default (None)"),
    # Every argument goes by keyword: a positional-only one is never filled.
    ("def f(scale, /, completions, **kwargs):\n    return [scale] * len(completions)\n",
     "parameter 'scale' is positional-only and has no default"),
])
def test_a_parameter_nothing_fills_is_refused_at_load(tmp_path, source, message):
    file = tmp_path / f"unfilled_{uuid.uuid4().hex[:8]}.py"
    file.write_text(source)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_reward(f"{file}:f")


def test_training_only_columns_with_a_default_and_positional_only_with_one_pass(tmp_path):
    file = tmp_path / f"filled_{uuid.uuid4().hex[:8]}.py"
    file.write_text("def f(scale=0.5, /, completions=None, completion_ids=None, trainer_state=None, **kwargs):\n"
                    "    return [scale if completion_ids is None else 1.0] * len(completions)\n")
    assert build_reward(f"{file}:f")(["a", "b"]) == [0.5, 0.5]
    assert build_reward(f"{file}:f")(["a"], completion_ids=[[1, 2]]) == [1.0]


def test_a_set_result_is_an_error_not_values_in_hash_order(tmp_path):
    # `{...}` for `[...]`: a set of distinct scores has the right length, and its values went to the samples in
    # hash order ([1.0, 2.0, 3.0] for completions of length 3, 1 and 2).
    file = tmp_path / f"sets_{uuid.uuid4().hex[:8]}.py"
    file.write_text("def f(completions, **kwargs):\n    return {float(len(c)) for c in completions}\n")
    with pytest.raises(RewardError, match=r"^reward 'f' returned a set, expected a list of 3 floats$"):
        build_reward(f"{file}:f")(["aaa", "b", "cc"])
