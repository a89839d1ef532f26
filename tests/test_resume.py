"""Checkpoints and `--resume`: finding the latest whole checkpoint, reusing base evaluations, and (slow) a run killed
with SIGKILL after its first checkpoint that resumes and finishes with every training step logged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from toolkit.checkpoints import (
    CheckpointError,
    base_results,
    check_same_lora,
    eval_key,
    latest_checkpoint,
    resume_checkpoint,
    start_fresh,
)

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(folder: Path, step: int, state: str | None = None) -> Path:
    """A checkpoint folder; with a state, whole: stand-ins for the files a resume reads back (empty zip archives as
    torch's, a safetensors file of no tensors)."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if state is not None:
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            zipfile.ZipFile(path / name, "w").close()
        (path / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
        (path / "adapter_config.json").write_text("{}")
        (path / "trainer_state.json").write_text(state)
    return path


def test_latest_whole_checkpoint_wins(tmp_path):
    _checkpoint(tmp_path, 2, json.dumps({"global_step": 2, "max_steps": 10}))
    ten = _checkpoint(tmp_path, 10, json.dumps({"global_step": 10, "max_steps": 10}))
    _checkpoint(tmp_path, 4, json.dumps({"global_step": 4}))
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert latest_checkpoint(tmp_path) == ten  # by step number, not name order (checkpoint-4 > checkpoint-10)
    assert resume_checkpoint(tmp_path, 10) == ten


def test_a_checkpoint_past_max_steps_is_one_line(tmp_path):
    path = _checkpoint(tmp_path, 4, json.dumps({"global_step": 4, "max_steps": 4}))
    assert resume_checkpoint(tmp_path, 4) == path  # all steps done: the run finishes without training
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is at step 4, past training.max_steps 3; raise "
                                              r"training.max_steps to at least 4, or run without --resume"):
        resume_checkpoint(tmp_path, 3)


def test_checkpoint_cut_short_is_skipped(tmp_path):
    two = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 4, '{"global_st')  # killed while the state was written
    _checkpoint(tmp_path, 6)  # killed before it
    assert latest_checkpoint(tmp_path) == two


@pytest.mark.parametrize("make", [lambda p: None, lambda p: _checkpoint(p / "trainer", 2)])
def test_resume_without_a_checkpoint_is_one_clear_line(tmp_path, make):
    make(tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*training.save_steps") as err:
        resume_checkpoint(tmp_path / "trainer", 10)
    assert "\n" not in str(err.value)


def test_resume_flag_fails_before_loading_anything(tmp_path, capsys):
    from toolkit.run import main

    assert main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--resume"]) == 2
    assert "--resume: no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("step", ["null", '"4"', "[4]", "4.5", "true"])
def test_a_hand_edited_global_step_is_one_line(tmp_path, capsys, step):
    # int() of it raised TypeError or ValueError out of main, a traceback (4.5 and "4" were taken as step 4).
    path = _checkpoint(tmp_path / "trainer", 4, f'{{"global_step": {step}}}')
    from toolkit.run import main

    assert main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{path / 'trainer_state.json'}: global_step must be a step number" in " ".join(err.split()), err


@pytest.mark.parametrize("name", ["optimizer.pt", "adapter_model.safetensors", "training_args.bin"])
def test_a_damaged_checkpoint_file_is_one_clear_line(tmp_path, name):
    """A truncated optimizer or adapter file used to fail inside torch or safetensors with a traceback, after the
    base evaluation; it is found before anything loads, naming the file and what to do."""
    import torch
    from safetensors.torch import save_file

    path = _checkpoint(tmp_path, 3, json.dumps({"global_step": 3, "max_steps": 10}))
    torch.save({"state": {0: torch.zeros(64)}}, path / "optimizer.pt")
    torch.save({"lr": 0.1}, path / "training_args.bin")
    save_file({"lora_A": torch.zeros(16, 64)}, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text("{}")
    assert resume_checkpoint(tmp_path, 10) == path  # whole files pass
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"--resume: .*{name} is damaged \(.*\); delete .*checkpoint-3 to"):
        resume_checkpoint(tmp_path, 10)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                                  "rng_state.pth"])
def test_a_checkpoint_missing_a_file_is_one_clear_line(tmp_path, name):
    """Without its adapter weights or config a resume failed in transformers or peft with a traceback ("Can't find a
    valid checkpoint at"), after the base evaluation; without optimizer.pt, scheduler.pt or rng_state.pth it trained
    on with a new optimizer, the schedule from step 0 and the RNG not where it was, without a word."""
    path = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=rf"^--resume: .*checkpoint-2 has no {name}; delete .*checkpoint-2 to "
                                              r"resume from the checkpoint before it"):
        resume_checkpoint(tmp_path, 4)
    if name == "adapter_config.json":
        (path / name).write_text('{"r": 1')  # cut short
        with pytest.raises(CheckpointError, match=r"adapter_config.json is damaged"):
            resume_checkpoint(tmp_path, 4)


@pytest.mark.parametrize("override, message", [
    ("training.lora.r=8", "was trained with training.lora.r 16, the recipe asks for 8; resume with the same"),
    ("training.lora.target_modules=[q_proj, v_proj]", "was trained with training.lora.target_modules ['down_proj', "),
    ("training.lora.layers_to_transform=null", "was trained with training.lora.layers_to_transform [15, "),
])
def test_resume_with_other_lora_settings_is_one_line(tmp_path, capsys, override, message):
    """A size mismatch (r) or an optimizer-group error (targets) used to surface from torch as a long traceback."""
    import toolkit.run
    from toolkit.recipe import load_recipe

    lora = load_recipe(ROOT / "recipes" / "wine.yaml").training.lora
    path = _checkpoint(tmp_path / "trainer", 2, json.dumps({"global_step": 2, "max_steps": 4}))
    (path / "adapter_config.json").write_text(json.dumps({
        "r": lora.r, "lora_alpha": lora.alpha, "target_modules": ["k_proj", "o_proj", "v_proj", "gate_proj", "q_proj",
                                                                  "up_proj", "down_proj"],
        "layers_to_transform": lora.layers_to_transform}))
    check_same_lora(path, lora)  # the recipe's own settings pass
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}", override, "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--resume: {path} {message}" in err, err


def test_all_linear_targets_are_compared_by_module_name(tmp_path):
    # `all-linear` resumed from a [q_proj, v_proj] checkpoint used to pass the check and then fail in torch with
    # "loaded state dict contains a parameter group that doesn't match the size of optimizer's group".
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.recipe import load_recipe
    from toolkit.train import linear_layers

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    linear = linear_layers(model)
    assert linear == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # no lm_head
    lora = load_recipe(ROOT / "recipes" / "wine.yaml", ["training.lora.target_modules=all-linear",
                                                        "training.lora.layers_to_transform=null"]).training.lora
    path = _checkpoint(tmp_path / "trainer", 2, json.dumps({"global_step": 2}))
    config = {"r": lora.r, "lora_alpha": lora.alpha, "layers_to_transform": None}
    (path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    check_same_lora(path, lora)  # the model's layers unknown yet: not compared
    with pytest.raises(CheckpointError, match=r"was trained with training.lora.target_modules \['q_proj', 'v_proj'\], "
                                              r"the recipe asks for 'all-linear' \(here \['down_proj', "):
        check_same_lora(path, lora, linear)
    # peft saves all-linear resolved to dotted names: the same layers, resumed as all-linear or listed, pass.
    dotted = [f"model.layers.{i}.{part}.{name}" for i in range(2) for part, names in
              (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
              for name in names]
    (path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": dotted}))
    check_same_lora(path, lora, linear)
    check_same_lora(path, lora.model_copy(update={"target_modules": linear}))


def test_resume_on_another_base_model_is_one_line_before_it_loads(tmp_path, capsys, monkeypatch):
    # A tiny model's checkpoint resumed on SmolLM2 used to print ~210 "size mismatch" lines after the base evaluation.
    import toolkit.run
    from toolkit.backends.hf import HFBackend
    from toolkit.checkpoints import check_same_base
    from toolkit.recipe import load_recipe

    other = tmp_path / "tiny-model"
    other.mkdir()
    path = _checkpoint(tmp_path / "run" / "trainer", 2, json.dumps({"global_step": 2}))
    lora = load_recipe(ROOT / "recipes" / "wine.yaml").training.lora
    (path / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(other), "r": lora.r, "lora_alpha": lora.alpha,
        "target_modules": lora.target_modules, "layers_to_transform": lora.layers_to_transform}))
    monkeypatch.setattr(HFBackend, "load", lambda *a: pytest.fail("loaded the model after a bad resume"))
    args = ["recipes/wine.yaml", f"output_dir={tmp_path / 'run'}", "training.max_steps=4", "--resume"]
    assert toolkit.run.main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--resume: {path} was trained on the base model {other}, the recipe's model is " in err, err
    check_same_base(path, str(other))
    check_same_base(path, str(other / ".." / "tiny-model"))  # the same folder
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    check_same_base(path, str(other))  # a cleared cache: cannot tell, let through
    # The same packaged conversion in another cache (XDG_CACHE_HOME): the same model, by its folder's name.
    cached = tmp_path / "cache-a" / "smollm2-135m-instruct-0.1.2-r2"
    cached.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(cached)}))
    elsewhere = tmp_path / "cache-b" / cached.name
    elsewhere.mkdir(parents=True)
    check_same_base(path, str(elsewhere), packaged=True)
    with pytest.raises(CheckpointError):
        check_same_base(path, str(elsewhere))  # a folder of the user's own: another copy is another model
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/model-a"}))
    with pytest.raises(CheckpointError, match="trained on the base model org/model-a, the recipe's model is org/b"):
        check_same_base(path, "org/b")


def test_resume_with_another_optimizer_is_one_line(tmp_path):
    """adamw to sgd used to load, then fail at the first step inside torch with `KeyError: 'momentum'`."""
    from toolkit.checkpoints import OPTIMIZER_RECORD, check_same_optimizer
    from toolkit.train import OptimizerRecord

    assert OptimizerRecord.__name__ == OPTIMIZER_RECORD  # the key transformers files its state under
    adamw = {"optim": "adamw_torch_fused", "learning_rate": 5e-4, "weight_decay": 0.0}
    state = {"global_step": 2, "stateful_callbacks": {OPTIMIZER_RECORD: OptimizerRecord(adamw).state()}}
    path = _checkpoint(tmp_path / "trainer", 2, json.dumps(state))
    check_same_optimizer(path, adamw)
    with pytest.raises(CheckpointError) as err:
        check_same_optimizer(path, {**adamw, "optim": "sgd"})
    assert str(err.value) == (f"--resume: {path} was trained with training.trl.optim 'adamw_torch_fused', the recipe "
                              "asks for 'sgd'; resume with the same optimizer settings, or run without --resume to "
                              "start over")
    older = _checkpoint(tmp_path / "trainer", 4, json.dumps({"global_step": 4, "stateful_callbacks": {}}))
    check_same_optimizer(older, {**adamw, "optim": "sgd"})  # written before the record: not checked
    only_optim = {"global_step": 6, "stateful_callbacks": {OPTIMIZER_RECORD: {"args": {"optim": "adamw_torch_fused"}}}}
    check_same_optimizer(_checkpoint(tmp_path / "trainer", 6, json.dumps(only_optim)), {**adamw, "learning_rate": 1})


def test_the_optimizer_record_is_rebuilt_from_a_checkpoint():
    """training.trl.restore_callback_states_from_checkpoint: transformers rebuilds each ExportableState callback as
    `type(callback)(**args)`; the record took one dict, and a resume failed in training with `TypeError:
    OptimizerRecord.__init__() got an unexpected keyword argument 'adam_beta1'`."""
    from types import SimpleNamespace

    from transformers import Trainer, TrainerControl
    from transformers.trainer_callback import CallbackHandler

    from toolkit.train import OptimizerRecord

    record = OptimizerRecord({"optim": "adamw_torch_fused", "learning_rate": 5e-4, "adam_beta1": 0.9})
    trainer = SimpleNamespace(args=SimpleNamespace(restore_callback_states_from_checkpoint=True),
                              callback_handler=CallbackHandler([record], None, None, None, None),
                              control=TrainerControl(), state=SimpleNamespace(stateful_callbacks={
                                  "OptimizerRecord": json.loads(json.dumps(record.state()))}))
    Trainer._load_callback_state(trainer)
    [restored] = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, OptimizerRecord)]
    assert restored is not record and restored.state() == record.state()


def test_resume_with_another_learning_rate_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    # The checkpoint's optimizer param groups and scheduler base rates replace the new rate on load: the resumed
    # steps trained at the old 5e-4 while report.json's recipe said 1e-5.
    import toolkit.run
    from toolkit.checkpoints import OPTIMIZER_RECORD
    from toolkit.recipe import load_recipe
    from toolkit.train import grpo_config, optimizer_settings

    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"output_dir={tmp_path}"])
    settings = optimizer_settings(grpo_config(recipe, tmp_path / "trainer"))
    assert settings["learning_rate"] == 5e-4 and settings["optim"] == "adamw_torch_fused"
    state = {"global_step": 2, "stateful_callbacks": {OPTIMIZER_RECORD: {"args": settings}}}
    path = _checkpoint(tmp_path / "trainer", 2, json.dumps(state))
    lora = recipe.training.lora
    (path / "adapter_config.json").write_text(json.dumps({
        "r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora.target_modules,
        "layers_to_transform": lora.layers_to_transform}))
    monkeypatch.setattr("toolkit.prompts.build_splits", lambda recipe: pytest.fail("loaded data after a bad resume"))
    args = ["recipes/wine.yaml", f"output_dir={tmp_path}", "training.max_steps=4", "--resume"]
    assert toolkit.run.main([*args, "training.learning_rate=1e-5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--resume: {path} was trained with training.learning_rate 0.0005, the recipe asks for 1e-05;" in err, err
    assert toolkit.run.main([*args, "training.trl={weight_decay: 0.1}"]) == 2
    assert "was trained with training.trl.weight_decay 0.0, the recipe asks for 0.1;" in " ".join(
        capsys.readouterr().err.split())


def test_resume_with_another_seed_is_one_line(tmp_path, capsys, monkeypatch):
    # The checkpoint's RNG state was restored while the data order came from the new seed: the trainer skipped the
    # trained batches of another order (questions trained twice, others never) and report.json showed the new seed.
    import toolkit.run
    from toolkit.checkpoints import OPTIMIZER_RECORD
    from toolkit.recipe import load_recipe
    from toolkit.train import grpo_config, optimizer_settings

    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"output_dir={tmp_path}"])
    lora = recipe.training.lora
    state = {"global_step": 2, "stateful_callbacks": {
        OPTIMIZER_RECORD: {"args": optimizer_settings(grpo_config(recipe, tmp_path / "trainer"))}}}
    path = _checkpoint(tmp_path / "trainer", 2, json.dumps(state))
    (path / "adapter_config.json").write_text(json.dumps({
        "r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora.target_modules,
        "layers_to_transform": lora.layers_to_transform}))
    monkeypatch.setattr("toolkit.prompts.build_splits", lambda recipe: pytest.fail("loaded data after a bad resume"))
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "training.seed=7", "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--resume: {path} was trained with training.seed 42, the recipe asks for 7; resume with the same seed" \
        in err, err


def test_fresh_run_removes_old_checkpoints(tmp_path):
    _checkpoint(tmp_path, 20, json.dumps({"global_step": 20}))
    (tmp_path / "base_eval.json").write_text("{}")
    start_fresh(tmp_path)
    assert latest_checkpoint(tmp_path) is None and (tmp_path / "base_eval.json").exists()
    start_fresh(tmp_path / "missing")  # nothing to do on a first run


def test_an_old_checkpoint_that_cannot_be_removed_is_one_line_and_left_whole(tmp_path, monkeypatch):
    # shutil.rmtree's OSError (a folder of another user's, a busy network mount) came out of toolkit.run as a
    # traceback, with the checkpoint half removed.
    import errno
    import shutil

    old = _checkpoint(tmp_path, 20, json.dumps({"global_step": 20}))
    monkeypatch.setattr(Path, "rename", lambda self, target: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))))
    with pytest.raises(CheckpointError, match=f"^output_dir: cannot remove the earlier run's checkpoint {old} "
                                              r"\(Permission denied\); move it away or set another output_dir$"):
        start_fresh(tmp_path)
    assert latest_checkpoint(tmp_path) == old
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: (_ for _ in ()).throw(OSError(errno.EBUSY, "busy")))
    with pytest.raises(CheckpointError, match="cannot remove the earlier run's checkpoint .*checkpoint-20 \\(busy\\)"):
        start_fresh(tmp_path)
    assert latest_checkpoint(tmp_path) is None  # renamed away whole: no half-removed one for a --resume to take


def test_a_leftover_of_an_earlier_removal_does_not_block_the_next(tmp_path, monkeypatch):
    # A pid-named folder (".checkpoint-20.removing-1") left by a removal that failed half way made the next run's
    # rename fail with "Directory not empty" in a container, where every run is pid 1.
    old = _checkpoint(tmp_path, 20, json.dumps({"global_step": 20}))
    leftover = tmp_path / ".checkpoint-20.removing-1" / "checkpoint-20"
    leftover.mkdir(parents=True)
    (leftover / "optimizer.pt").write_text("x")
    monkeypatch.setattr(os, "getpid", lambda: 1)
    start_fresh(tmp_path)
    assert latest_checkpoint(tmp_path) is None and not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-20.removing-1"]  # nothing new left behind


def test_a_run_that_fails_before_training_keeps_the_old_checkpoints(tmp_path, capsys):
    # They go only when the new run starts training: a bad data file must not cost the earlier run's --resume.
    from toolkit.run import main

    old = _checkpoint(tmp_path / "run" / "trainer", 20, json.dumps({"global_step": 20}))
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "Which river?"\n')
    assert main(["recipes/wine.yaml", f"output_dir={tmp_path / 'run'}", f"data.train={bad}"]) == 2
    assert f"{bad}:1: invalid JSON" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run" / "trainer") == old


def test_ctrl_c_says_how_to_continue_and_exits_130(tmp_path, monkeypatch, capsys):
    import toolkit.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.run, "run", interrupted)
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: no checkpoint to --resume from" in err and "Traceback" not in err
    two = _checkpoint(tmp_path / "trainer", 2, json.dumps({"global_step": 2}))
    # Written before this run started, without --resume: an earlier run's, which this run has not removed yet
    # (that happens when its training starts); --resume would continue the earlier run whatever the recipe says.
    os.utime(two / "trainer_state.json", (time.time() - 60, time.time() - 60))
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert f"interrupted: no checkpoint of this run yet ({two} is an earlier run's, removed when this run's " in err
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--resume"]) == 130
    assert f"interrupted: --resume continues from {two}, the latest checkpoint there" in capsys.readouterr().err

    def interrupted_after_a_checkpoint(*args, **kwargs):
        _checkpoint(tmp_path / "trainer", 4, json.dumps({"global_step": 4}))
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.run, "run", interrupted_after_a_checkpoint)
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}"]) == 130
    assert f"interrupted: --resume continues from {tmp_path / 'trainer' / 'checkpoint-4'}, the latest" in " ".join(
        capsys.readouterr().err.split())


def test_eval_key_changes_with_what_the_base_columns_depend_on():
    from toolkit.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "wine.yaml")
    rows = [{"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}]
    key = eval_key(recipe, "/m", rows, "hf")
    assert key == eval_key(load_recipe(ROOT / "recipes" / "wine.yaml", ["training.max_steps=3"]), "/m", rows, "hf")
    assert key != eval_key(recipe, "/m", rows, "unsloth")  # resumed on another machine, another backend
    assert key != eval_key(load_recipe(ROOT / "recipes" / "wine.yaml", ["eval.max_new_tokens=64"]), "/m", rows, "hf")
    assert key != eval_key(recipe, "/other", rows, "hf")
    assert key != eval_key(recipe, "/m", [{**rows[0], "answer": "Ebro"}], "hf")


def test_eval_key_changes_when_a_local_models_weights_are_replaced_in_place(tmp_path):
    # Only the path counted: weights rewritten under the same folder (a layer in the middle of the file) reused the
    # earlier run's base columns.
    from toolkit.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "wine.yaml")
    rows = [{"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}]
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(bytes(5 << 20))
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    key = eval_key(recipe, str(weights.parent), rows, "hf")
    assert key == eval_key(recipe, str(weights.parent), rows, "hf")
    with weights.open("r+b") as f:
        f.seek(5 << 19)
        f.write(b"\x01")  # the first and last MiB unchanged
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))
    changed = eval_key(recipe, str(weights.parent), rows, "hf")
    assert changed != key and {name for name in key if key[name] != changed[name]} == {"model"}


def test_a_base_evaluation_saved_by_an_older_version_says_so(tmp_path, caplog):
    # Its key was one string; nothing of the recipe had changed, yet the log said "the recipe or eval data changed".
    from toolkit.recipe import load_recipe

    (tmp_path / "base_eval.json").write_text(json.dumps({"key": "0" * 64, "results": {"base": []}}))
    key = eval_key(load_recipe(ROOT / "recipes" / "wine.yaml"), "/m", [], "hf")
    with caplog.at_level("INFO", logger="toolkit.checkpoints"):
        base_results(tmp_path, key, True, lambda: {"base": []})
    assert "evaluating the base columns again: the earlier run's base evaluation was saved by an older version" \
        in caplog.text


def test_the_log_names_what_changed_since_the_earlier_run(tmp_path, caplog):
    from toolkit.recipe import load_recipe

    rows = [{"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}]
    base_results(tmp_path, eval_key(load_recipe(ROOT / "recipes" / "wine.yaml"), "/m", rows, "hf"), False,
                 lambda: {"base": []})
    key = eval_key(load_recipe(ROOT / "recipes" / "wine.yaml", ["eval.max_new_tokens=64"]), "/other", rows, "hf")
    with caplog.at_level("INFO", logger="toolkit.checkpoints"):
        base_results(tmp_path, key, True, lambda: {"base": []})
    line = next(r.getMessage() for r in caplog.records if "evaluating the base columns again: " in r.getMessage())
    assert line.endswith("changed since the earlier run: the base model (its path or its files), the recipe's eval "
                         "section")


def test_eval_key_changes_when_a_custom_reward_file_is_edited(tmp_path):
    # Edited between a run and its --resume, the reward scores the base columns otherwise: reusing the saved ones
    # made the edit look like a significant gain from training.
    from toolkit.recipe import load_recipe

    reward = tmp_path / "my_reward.py"
    reward.write_text("def score(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"rewards.5={{name: '{reward}:score'}}"])
    rows = [{"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}]
    key = eval_key(recipe, "/m", rows, "hf")
    assert key == eval_key(recipe, "/m", rows, "hf")
    reward.write_text("def score(completions, **kwargs):\n    return [0.5] * len(completions)\n")
    assert key != eval_key(recipe, "/m", rows, "hf")
    # The file the recipe names, whatever the function is: a callable object (getsourcefile refused it, and every
    # run failed with a traceback), or a function decorated by a wrapper from another file (that file was hashed).
    (tmp_path / "wrap.py").write_text("import functools\ndef keep(fn):\n    @functools.wraps(fn)\n"
                                      "    def inner(*a, **k):\n        return fn(*a, **k)\n    return inner\n")
    for name, text in (("obj", "class S:\n    def __call__(self, completions, **kwargs):\n        return [V] * "
                                "len(completions)\nscore = S()\n"),
                       ("deco", f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nfrom wrap import keep\n@keep\n"
                                "def score(completions, **kwargs):\n    return [V] * len(completions)\n")):
        file = tmp_path / f"{name}.py"
        file.write_text(text.replace("V", "0.25"))
        recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"rewards.5={{name: '{file}:score'}}"])
        key = eval_key(recipe, "/m", rows, "hf")
        file.write_text(text.replace("V", "0.75"))
        assert key != eval_key(recipe, "/m", rows, "hf"), name


def test_eval_key_changes_when_a_helper_the_reward_imports_is_edited(tmp_path, monkeypatch):
    # Only the reward's own file counted: editing `crhelp.py`, which it imports, kept the saved base columns.
    import uuid

    from toolkit.recipe import load_recipe

    tag = uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"crhelp_{tag}.py").write_text("V = 0.1\n")
    reward = tmp_path / "cr.py"
    reward.write_text(f"import crhelp_{tag}\ndef cr(completions, **kwargs):\n    return [crhelp_{tag}.V] * "
                      "len(completions)\n")
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"rewards.5={{name: '{reward}:cr'}}"])
    rows = [{"prompt": [{"role": "user", "content": "?"}], "answer": "Ebro River"}]
    key = eval_key(recipe, "/m", rows, "hf")
    (tmp_path / f"crhelp_{tag}.py").write_text("V = 0.7\n")
    changed = eval_key(recipe, "/m", rows, "hf")
    assert {name for name in key if key[name] != changed[name]} == {"reward_code"}


def test_a_full_disk_while_saving_the_base_evaluation_is_one_line(tmp_path, monkeypatch):
    # write_atomic's OSError came out of toolkit.run as a traceback, after the base columns' minutes.
    import errno

    def full(fd, *args, **kwargs):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", full)
    with pytest.raises(CheckpointError, match=f"^cannot write {tmp_path / 'base_eval.json'}: No space left on device$"):
        base_results(tmp_path, "k", False, lambda: {"base": []})
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_base_results_reused_only_on_resume_with_the_same_key(tmp_path):
    calls = []

    def evaluate(value):
        return lambda: calls.append(value) or {"base": [{"completion": value}]}

    assert base_results(tmp_path, "k1", False, evaluate("a")) == {"base": [{"completion": "a"}]}
    assert base_results(tmp_path, "k1", True, evaluate("b")) == {"base": [{"completion": "a"}]}  # reused
    assert base_results(tmp_path, "k2", True, evaluate("c")) == {"base": [{"completion": "c"}]}  # recipe changed
    assert base_results(tmp_path, "k2", False, evaluate("d")) == {"base": [{"completion": "d"}]}  # fresh run
    assert calls == ["a", "c", "d"]


@pytest.mark.parametrize("text, why", [(None, "no saved base evaluation in"), ("{bad", "base_eval.json is unreadable"),
                                       ("[1]", "base_eval.json is not a saved evaluation")])
def test_base_results_say_why_they_are_evaluated_again(tmp_path, caplog, text, why):
    if text is not None:
        (tmp_path / "base_eval.json").write_text(text)
    with caplog.at_level("INFO", logger="toolkit.checkpoints"):
        assert base_results(tmp_path, "k", True, lambda: {"base": []}) == {"base": []}
    line = next(r.getMessage() for r in caplog.records if "evaluating the base columns again: " in r.getMessage())
    assert why in line


@pytest.mark.parametrize("steps, seconds, resumed_from, line", [
    (4, 135.4, None, "trained 4 steps in 135 s"),
    (1, 9.0, None, "trained 1 step in 9 s"),
    # seconds time only what this process trained: it said "trained 6 steps in 15 s" for steps 5 and 6.
    (6, 15.2, 4, "trained steps 5-6 (2 steps; resumed from step 4) in 15 s"),
    (5, 7.6, 4, "trained step 5 (1 step; resumed from step 4) in 8 s"),
    (4, 0.1, 4, "no steps trained: the checkpoint was already at step 4"),  # said "trained 4 steps in 0 s"
])
def test_the_training_log_line_says_which_steps_were_trained(steps, seconds, resumed_from, line):
    from toolkit.train import TrainResult

    result = TrainResult(steps, seconds, resumed_from=resumed_from)
    assert result.summary() == line
    assert result.trained_steps == steps - (resumed_from or 0)


# Tiny on purpose (CI has 2 cores): 4 steps of one question × 4 completions of 8 tokens, 2 eval questions.
TINY = [
    "training.max_steps=4",
    "training.save_steps=2",
    "training.num_generations=4",
    "training.per_device_train_batch_size=4",
    "training.max_completion_length=8",
    "data.max_train_questions=4",
    "eval.limit=2",
    "eval.max_new_tokens=8",
]


def _steps(log_history: list[dict]) -> list[int]:
    return [entry["step"] for entry in log_history if "reward" in entry]


@pytest.mark.slow
def test_killed_run_resumes_to_max_steps(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={out}", *TINY]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    state = out / "trainer" / "checkpoint-2" / "trainer_state.json"
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 900
        while not _readable(state):  # written last: the checkpoint is whole once it parses
            assert first.poll() is None, f"the run ended before its first checkpoint:\n{first.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint-2 after 15 minutes"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # no cleanup, no atexit: like a preempted machine
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert not (out / "adapter").exists() and not (out / "report.json").exists()
    saved = json.loads(state.read_text())
    assert _steps(saved["log_history"]) == [1, 2]
    assert saved["stateful_callbacks"]["OptimizerRecord"]["args"]["optim"] == "adamw_torch_fused"
    assert saved["stateful_callbacks"]["OptimizerRecord"]["args"]["learning_rate"] == 5e-4

    other = subprocess.run([*command, "training.trl={optim: sgd}", "--resume"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    assert other.returncode == 2, other.stderr[-3000:]
    assert "was trained with training.trl.optim 'adamw_torch_fused', the recipe asks for 'sgd'" in " ".join(
        other.stderr.split()), other.stderr[-3000:]

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = " ".join(resumed.stderr.split())  # rich wraps log lines at the console width
    assert "resuming from" in logged and "reusing the base evaluation" in logged, resumed.stderr[-3000:]
    # The time is that of steps 3-4 alone; the line said "trained 4 steps in N s".
    assert "trained steps 3-4 (2 steps; resumed from step 2) in " in logged, resumed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    history = report["training"]["log_history"]
    assert _steps(history) == [1, 2, 3, 4]  # every step exactly once, continuing from the checkpoint
    assert history[:2] == saved["log_history"]  # steps 1–2 come from the checkpoint, not from training them again
    assert report["training"]["steps"] == 4 and report["training"]["curves"]["step"] == [1, 2, 3, 4]
    assert report["training"]["resumed_from_step"] == 2
    assert "4 GRPO steps (steps 3-4 trained in " in (out / "report.md").read_text()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert {"no_context", "base", "tuned"} <= report.keys()
    assert (out / "trainer" / "checkpoint-4").is_dir()

    # Resuming a run whose last checkpoint is at max_steps trains nothing more (transformers alone would take a
    # fifth step) and evaluates that checkpoint's adapter again.
    again = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    logged = " ".join(again.stderr.split())
    assert "nothing left to train" in logged, again.stderr[-3000:]
    assert "no steps trained: the checkpoint was already at step 4" in logged, again.stderr[-3000:]
    assert not (out / "trainer" / "checkpoint-5").exists()
    rerun = json.loads((out / "report.json").read_text())
    assert _steps(rerun["training"]["log_history"]) == [1, 2, 3, 4] and rerun["tuned"] == report["tuned"]
    assert rerun["training"]["resumed_from_step"] == 4
    assert "4 GRPO steps, all from the checkpoint at step 4 (resumed; none trained again)" in (
        out / "report.md").read_text()
    assert _tensors(out / "adapter") == _tensors(out / "trainer" / "checkpoint-4")

    fewer = subprocess.run([*command, "training.max_steps=3", "--resume"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
    assert fewer.returncode == 2 and "past training.max_steps 3" in " ".join(fewer.stderr.split()), fewer.stderr


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.tolist() for k, v in load_file(folder / "adapter_model.safetensors").items()}


def _readable(path: Path) -> bool:
    try:
        return "global_step" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def test_a_resumed_run_saves_and_logs_by_the_recipe_and_outlives_its_checkpoint(tmp_path):
    """Two defects of a resumed train(), on the packaged model at tiny sizes. transformers loads the checkpoint's
    trainer_state.json with its save and logging intervals, and saved and logged by those, not the recipe's. And
    with two checkpoints kept, the one resumed from was removed once two more were saved, after which train()
    read its step from it: `FileNotFoundError` after the whole training, and no report."""
    from transformers import TrainerCallback

    from toolkit.backends.hf import HFBackend
    from toolkit.models import resolve_model
    from toolkit.recipe import load_recipe
    from toolkit.train import train

    tiny = ["training.num_generations=2", "training.per_device_train_batch_size=2", "training.max_completion_length=4",
            "rewards=[{name: length, params: {min_words: 1, max_words: 3}}]"]
    rows = [{"prompt": [{"role": "user", "content": "Name a red grape."}]}] * 2
    work = tmp_path / "trainer"

    class Saves(TrainerCallback):
        steps: list[int] = []

        def on_save(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    def run(overrides, **kwargs):
        recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [*tiny, *overrides])
        model, tokenizer = HFBackend().load(recipe, resolve_model(recipe.model.name_or_path))
        return train(recipe, model, tokenizer, rows, work, callbacks=[Saves()], **kwargs)[1]

    run(["training.max_steps=2", "training.save_steps=1", "training.logging_steps=1"])
    assert Saves.steps == [1, 2]
    Saves.steps.clear()
    result = run(["training.max_steps=5", "training.save_steps=2", "training.logging_steps=2"],
                 resume_from=work / "checkpoint-2")
    assert Saves.steps == [4, 5]  # every 2 steps and the last, as the recipe says now; were [3, 4, 5]
    assert _steps(result.log_history) == [1, 2, 4, 5]  # 1-2 logged by the first run, then every 2 and the last
    assert result.steps == 5 and result.resumed_from == 2
    assert not (work / "checkpoint-2").exists()  # rotated away during training (two kept: 4 and 5)


def test_a_linked_old_checkpoint_goes_as_a_link(tmp_path):
    # Since start_fresh shared toolkit.run's remove_whole, a checkpoint-N that is a link (a checkpoint moved to a
    # bigger disk and linked back) failed the run: "Cannot call rmtree on a symbolic link", the link left renamed
    # to a hidden name. The link goes; what it points to is not this run's to delete.
    elsewhere = _checkpoint(tmp_path / "disk", 20, json.dumps({"global_step": 20}))
    trainer = tmp_path / "trainer"
    trainer.mkdir()
    (trainer / "checkpoint-20").symlink_to(elsewhere)
    start_fresh(trainer)
    assert list(trainer.iterdir()) == [] and latest_checkpoint(elsewhere.parent) == elsewhere
