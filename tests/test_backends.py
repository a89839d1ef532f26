"""Tests for toolkit.backends: which backend `auto` picks and why, the hf backend on a CPU (one real GRPO step),
the unsloth backend's calls (with a stand-in Unsloth on a CPU), and on a CUDA machine real runs of both."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from toolkit import backends
from toolkit.backends import BackendError, select_backend
from toolkit.backends.hf import HFBackend
from toolkit.backends.unsloth import ALL_LINEAR, UnslothBackend
from toolkit.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
WINE = ROOT / "recipes" / "wine.yaml"
CUDA = torch.cuda.is_available()


@pytest.fixture
def fake_unsloth(monkeypatch):
    """An importable stand-in for `unsloth` that records FastLanguageModel calls, on a machine with a GPU."""
    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return "model", types.SimpleNamespace(pad_token=None, eos_token="</s>", padding_side="right",
                                                  chat_template=calls.get("chat_template", "{{ messages }}"))

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return "peft-model"

        @staticmethod
        def for_inference(model):
            calls["for_inference"] = model

    module = types.ModuleType("unsloth")
    module.__version__ = "2026.10.9"
    module.FastLanguageModel = FastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", module)
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "_gpu_name", lambda: "Test GPU")
    return calls


# ------------------------------------------------------------------------------------------------- selection


@pytest.mark.skipif(CUDA, reason="checks the choice on a machine without a GPU")
def test_auto_picks_hf_on_a_cpu_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="toolkit.backends"):
        backend = select_backend("auto")
    assert isinstance(backend, HFBackend) and backend.name == "hf"
    assert "no CUDA GPU" in backend.reason
    assert any("backend hf" in r.getMessage() and "no CUDA GPU" in r.getMessage() for r in caplog.records)


def test_auto_picks_hf_when_unsloth_does_not_import(monkeypatch, caplog):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # `import unsloth` now raises ImportError
    with caplog.at_level(logging.INFO, logger="toolkit.backends"):
        backend = select_backend("auto")
    assert backend.name == "hf"
    assert "unsloth does not import (ModuleNotFoundError" in backend.reason and "toolkit[cuda]" in backend.reason
    assert "unsloth does not import" in caplog.text


def test_auto_picks_unsloth_on_cuda_where_it_imports(fake_unsloth, caplog):
    with caplog.at_level(logging.INFO, logger="toolkit.backends"):
        backend = select_backend("auto")
    assert isinstance(backend, UnslothBackend)
    assert "Test GPU" in backend.reason and "2026.10.9" in backend.reason
    assert "backend unsloth" in caplog.text


def test_explicit_unsloth_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    with pytest.raises(BackendError, match="needs a CUDA GPU.*model.backend=hf"):
        select_backend("unsloth")


def test_explicit_unsloth_that_does_not_import_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)
    with pytest.raises(BackendError, match=r"does not import.*toolkit\[cuda\]"):
        select_backend("unsloth")


def test_a_broken_vllm_is_logged_a_missing_one_is_not(monkeypatch, caplog):
    import importlib

    from toolkit.backends.unsloth import vllm_importable

    def broken(name):
        raise RuntimeError("CUDA driver too old")

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert not vllm_importable() and caplog.text == ""
    monkeypatch.setattr(importlib, "import_module", broken)
    assert not vllm_importable()
    assert "vLLM does not import (RuntimeError: CUDA driver too old); generating without it" in caplog.text


def test_explicit_hf_is_taken_as_is():
    assert select_backend("hf").reason == "model.backend is hf"


def test_importing_the_toolkit_imports_no_cuda_packages():
    code = (
        "import sys, toolkit.backends, toolkit.backends.hf, toolkit.backends.unsloth, toolkit.memory, toolkit.run; "
        "print(sorted(m for m in ('unsloth', 'bitsandbytes', 'xformers', 'vllm', 'trl', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------- the hf backend (CPU)


def test_grpo_config_on_a_cpu_is_unchanged_by_the_hf_backend():
    from toolkit.train import grpo_config

    recipe = load_recipe(WINE)
    plain = grpo_config(recipe, Path("/tmp/x")).to_dict()
    assert grpo_config(recipe, Path("/tmp/x"), HFBackend()).to_dict() == plain
    if not CUDA:
        assert plain["use_cpu"] and not plain["bf16"] and not plain["fp16"] and not plain["gradient_checkpointing"]
    assert plain["learning_rate"] == recipe.training.learning_rate and plain["num_generations"] == 4


def test_trl_passthrough_reaches_grpo_config_last():
    from toolkit.train import grpo_config

    recipe = load_recipe(WINE, ["training.trl={max_grad_norm: 0.3, gradient_checkpointing: true, weight_decay: 0.1}"])
    config = grpo_config(recipe, Path("/tmp/x"), HFBackend())
    # A field the toolkit sets itself (gradient_checkpointing) may be overridden; the rest pass as they are.
    assert (config.max_grad_norm, config.gradient_checkpointing, config.weight_decay) == (0.3, True, 0.1)


def test_a_combination_grpo_config_refuses_is_one_line_naming_the_section():
    from toolkit.train import grpo_config

    recipe = load_recipe(WINE, ["training.trl={torch_empty_cache_steps: 0}"])
    with pytest.raises(RecipeError) as err:
        grpo_config(recipe, Path("/tmp/x"), HFBackend())
    message = str(err.value)
    assert message.startswith("training: trl.GRPOConfig refused these settings: `torch_empty_cache_steps` must be")
    assert "\n" not in message


def _missing(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is not None, reason=f"{package} is installed")


@pytest.mark.parametrize("trl, message", [
    pytest.param("{optim: adamw_8bit}", "training.trl.optim: adamw_8bit: You need to install `bitsandbytes`",
                 marks=_missing("bitsandbytes")),
    ("{optim: adafactor, optim_args: zzz}", "training.trl.optim_args: adafactor: not enough values to unpack"),
    ("{lr_scheduler_kwargs: {num_cycles: 0.5, bogus: 1}}",
     "training.trl.lr_scheduler_kwargs: for training.lr_scheduler_type cosine: get_cosine_schedule_with_warmup() "
     "got an unexpected keyword argument 'bogus'"),
    ("{lr_scheduler_kwargs: foo}", "training.trl.lr_scheduler_kwargs: for training.lr_scheduler_type cosine: "),
    pytest.param("{report_to: wandb}", "training.trl.report_to: WandbCallback requires wandb to be installed",
                 marks=_missing("wandb")),
    pytest.param("{use_vllm: true}", "training.trl.use_vllm: vLLM is not installed", marks=_missing("vllm")),
    pytest.param("{use_liger_kernel: true}", "training.trl.use_liger_kernel: the Liger kernels are not installed",
                 marks=_missing("liger_kernel")),
])
def test_what_the_trainer_resolves_at_its_start_fails_before_training(trl, message):
    """transformers resolves these when training starts, after the base evaluation (a minute of a CPU run)."""
    from toolkit.train import check_trainer_settings, grpo_config

    config = grpo_config(load_recipe(WINE, ["training.lr_scheduler_type=cosine", f"training.trl={trl}"]),
                         Path("/tmp/x"))
    with pytest.raises(RecipeError) as err:
        check_trainer_settings(config, torch.nn.Linear(2, 2))
    assert str(err.value).startswith(f"training.trl.{trl[1:].split(':')[0]}") or "optim_args" in message
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_settings_the_trainer_resolves_pass_when_they_are_sound():
    from toolkit.train import check_trainer_settings, grpo_config

    cosine = ["training.lr_scheduler_type=cosine", "training.trl={lr_scheduler_kwargs: {num_cycles: 0.25}}"]
    for overrides in ([], cosine,
                      ["training.trl={optim: adafactor, report_to: none}"]):
        check_trainer_settings(grpo_config(load_recipe(WINE, overrides), Path("/tmp/x")), torch.nn.Linear(2, 2))


def test_grpo_config_states_epsilon_high_so_both_backends_clip_alike():
    """Unsloth's GRPOConfig turns an unset epsilon_high into 0.28 under loss_type dapo; TRL into epsilon."""
    from toolkit.train import grpo_config

    default = grpo_config(load_recipe(WINE), Path("/tmp/x"), HFBackend())
    assert default.loss_type == "dapo" and default.epsilon_high == default.epsilon == 0.2
    assert grpo_config(load_recipe(WINE, ["training.trl={epsilon: 0.3}"]), Path("/tmp/x")).epsilon_high == 0.3
    chosen = grpo_config(load_recipe(WINE, ["training.trl={epsilon_high: 0.28}"]), Path("/tmp/x"))
    assert (chosen.epsilon, chosen.epsilon_high) == (0.2, 0.28)


def test_grpo_config_warns_when_the_config_class_changes_a_setting(monkeypatch, caplog):
    """Plain TRL keeps every setting; Unsloth's patched GRPOConfig rewrites scale_rewards under dr_grpo and only
    prints a line. The stand-in below does what Unsloth 2026.10's generated config code does."""
    import trl

    from toolkit.train import grpo_config

    recipe = load_recipe(WINE, ["training.loss_type=dr_grpo", "training.trl={max_grad_norm: 0.3}"])
    with caplog.at_level(logging.WARNING, logger="toolkit.train"):
        grpo_config(recipe, Path("/tmp/x"), HFBackend())
    assert caplog.records == []  # TRL's own GRPOConfig: nothing changed, nothing said

    class UnslothGRPOConfig(trl.GRPOConfig):
        def __init__(self, *, scale_rewards="group", loss_type="dapo", max_grad_norm=1.0, **kwargs):
            if loss_type == "dr_grpo" and scale_rewards in (True, "group"):
                scale_rewards = False
            super().__init__(scale_rewards=scale_rewards, loss_type=loss_type, max_grad_norm=0.5, **kwargs)

    monkeypatch.setattr(trl, "GRPOConfig", UnslothGRPOConfig)
    with caplog.at_level(logging.WARNING, logger="toolkit.train"):
        config = grpo_config(recipe, Path("/tmp/x"), HFBackend())
    assert config.scale_rewards == "none"  # TRL's __post_init__ reads False as "none"
    source = f"UnslothGRPOConfig from {__name__.split('.')[0]}"
    assert [r.getMessage() for r in caplog.records] == [
        f"training.scale_rewards: {source} changed 'group' to 'none'; the recipe's value is not used",
        f"training.trl.max_grad_norm: {source} changed 0.3 to 0.5; the recipe's value is not used",
    ]


@pytest.mark.skipif(CUDA, reason="the CPU load path")
def test_hf_backend_loads_fp32_on_a_cpu_and_ignores_4bit_with_a_warning(caplog):
    from toolkit.models import resolve_model

    recipe = load_recipe(WINE, ["model.load_in_4bit=true"])
    with caplog.at_level(logging.WARNING, logger="toolkit.backends.hf"):
        model, tokenizer = HFBackend().load(recipe, resolve_model(recipe.model.name_or_path))
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.padding_side == "left"
    assert "load_in_4bit is ignored" in caplog.text


def test_hf_backend_trains_one_real_step(tmp_path):
    """One GRPO step through the backend on the packaged model, tiny sizes: TRL wraps it with the recipe's LoRA."""
    from toolkit.models import resolve_model
    from toolkit.train import train

    recipe = load_recipe(WINE, [
        "training.max_steps=1", "training.num_generations=2", "training.per_device_train_batch_size=2",
        "training.max_completion_length=8", "rewards=[{name: length, params: {min_words: 1, max_words: 3}}]",
    ])
    backend = HFBackend()
    model, tokenizer = backend.load(recipe, resolve_model(recipe.model.name_or_path))
    rows = [{"prompt": [{"role": "user", "content": "Name a red grape."}]}] * 2
    trainer, result = train(recipe, model, tokenizer, rows, tmp_path / "trainer", backend=backend)
    assert result.steps == 1
    # Generation and the loss pass read each group's shared prompt once (toolkit.generation).
    assert {"generate", "forward"} <= set(vars(trainer.model))
    backend.save_adapter(trainer.model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == recipe.training.lora.r and config["layers_to_transform"] == list(range(15, 30))


def test_fewer_training_questions_than_a_generation_batch_is_refused_not_zero_steps(tmp_path):
    """TRL's sampler drops an incomplete generation batch: 1 question where a batch samples 2 trained no step, and
    the run went on to evaluate the base model as the tuned one."""
    from toolkit.models import resolve_model
    from toolkit.train import train

    recipe = load_recipe(WINE, [
        "training.max_steps=1", "training.num_generations=2", "training.per_device_train_batch_size=4",
        "training.max_completion_length=8", "rewards=[{name: length, params: {min_words: 1, max_words: 3}}]",
    ])
    backend = HFBackend()
    model, tokenizer = backend.load(recipe, resolve_model(recipe.model.name_or_path))
    rows = [{"prompt": [{"role": "user", "content": "Name a red grape."}]}]
    with pytest.raises(RecipeError) as err:
        train(recipe, model, tokenizer, rows, tmp_path / "trainer", backend=backend)
    assert str(err.value).startswith("training: 1 training question, but each generation batch samples 2 ")
    assert "lower training.per_device_train_batch_size" in str(err.value)


def test_training_seed_fixes_the_adapter_init_whatever_used_the_rng_before(tmp_path):
    """The same recipe gives the same adapter after a step even when the process drew random numbers before."""
    from toolkit.models import resolve_model
    from toolkit.train import train

    recipe = load_recipe(WINE, [
        "training.max_steps=1", "training.num_generations=2", "training.per_device_train_batch_size=2",
        "training.max_completion_length=8", "rewards=[{name: length, params: {min_words: 1, max_words: 3}}]",
    ])
    rows = [{"prompt": [{"role": "user", "content": "Name a red grape."}]}] * 2
    adapters = []
    for draws in (0, 1000):
        torch.rand(draws)  # e.g. an evaluation that sampled before training
        model, tokenizer = HFBackend().load(recipe, resolve_model(recipe.model.name_or_path))
        trainer, _ = train(recipe, model, tokenizer, rows, tmp_path / f"trainer-{draws}")
        adapters.append({k: v.clone() for k, v in trainer.model.named_parameters() if "lora_" in k})
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


# ------------------------------------------------------------------------- the unsloth backend, stand-in Unsloth


def test_unsloth_backend_loads_with_the_recipe_settings(fake_unsloth):
    recipe = load_recipe(WINE, ["model.load_in_4bit=true", "model.max_seq_length=1024"])
    model, tokenizer = UnslothBackend(fast_inference=False).load(recipe, "/models/qwen")
    assert fake_unsloth["from_pretrained"] == {
        "model_name": "/models/qwen", "max_seq_length": 1024, "load_in_4bit": True, "fast_inference": False,
        "dtype": None,
    }
    assert tokenizer.pad_token == "</s>" and tokenizer.padding_side == "left"


def test_unsloth_backend_refuses_a_tokenizer_without_a_chat_template(fake_unsloth):
    # The hf backend refused it at load; here the first render of a prompt raised transformers' ValueError.
    from toolkit.models import ModelError

    fake_unsloth["chat_template"] = None
    with pytest.raises(ModelError, match=r"^model /models/base: its tokenizer has no chat template; use an "):
        UnslothBackend(fast_inference=False).load(load_recipe(WINE), "/models/base")


def test_unsloth_backend_with_vllm_sizes_its_lora_slots(fake_unsloth):
    recipe = load_recipe(WINE, ["training.lora.r=32"])
    UnslothBackend(fast_inference=True).load(recipe, "/models/qwen")
    kwargs = fake_unsloth["from_pretrained"]
    assert kwargs["fast_inference"] is True and kwargs["max_lora_rank"] == 32


def test_unsloth_backend_wraps_with_unsloth_lora_and_no_peft_config(fake_unsloth, monkeypatch):
    import trl

    built = {}

    class UnslothGRPOTrainer:  # the name Unsloth's patch gives trl.GRPOTrainer
        def __init__(self, **kwargs):
            built.update(kwargs)

    monkeypatch.setattr(trl, "GRPOTrainer", UnslothGRPOTrainer)
    recipe = load_recipe(WINE, ["training.lora.target_modules=all-linear", "training.lora.layers_to_transform=null"])
    UnslothBackend(fast_inference=False).build_trainer(recipe, "model", "tokenizer", args="args")
    assert fake_unsloth["get_peft_model"] == {
        "r": 16, "target_modules": ALL_LINEAR, "lora_alpha": 32, "lora_dropout": 0.0, "layers_to_transform": None,
        "use_gradient_checkpointing": "unsloth", "random_state": 42,
    }
    assert built == {"model": "peft-model", "processing_class": "tokenizer", "args": "args"}  # no peft_config


def test_unsloth_overrides_leave_precision_to_unsloth_and_keep_its_checkpointing():
    overrides = UnslothBackend(fast_inference=False).grpo_overrides(load_recipe(WINE))
    assert overrides == {"bf16": False, "fp16": False, "gradient_checkpointing": True, "use_vllm": False}


def test_context_length_is_the_models_and_unsloths_cap():
    recipe = load_recipe(WINE, ["model.max_seq_length=1024"])
    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=8192))
    assert HFBackend().context_length(recipe, model) == 8192
    assert UnslothBackend(fast_inference=False).context_length(recipe, model) == 1024  # its caches are that long
    assert UnslothBackend(fast_inference=False).context_length(load_recipe(WINE, ["model.max_seq_length=16384"]),
                                                               model) == 8192
    unknown = types.SimpleNamespace(config=types.SimpleNamespace())
    assert HFBackend().context_length(recipe, unknown) is None
    assert UnslothBackend(fast_inference=False).context_length(recipe, unknown) == 1024


def test_unsloth_inference_mode_pads_left(fake_unsloth):
    tokenizer = types.SimpleNamespace(padding_side="right")
    assert UnslothBackend(fast_inference=False).for_inference("model", tokenizer) == "model"
    assert fake_unsloth["for_inference"] == "model" and tokenizer.padding_side == "left"


# -------------------------------------------------------------------------------------------- on a CUDA GPU

TINY = [
    "training.max_steps=1", "training.num_generations=4", "training.per_device_train_batch_size=4",
    "training.max_completion_length=16", "data.max_train_questions=4", "eval.limit=4", "eval.max_new_tokens=16",
    "model.load_in_4bit=true",
]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (and `pip install 'toolkit[cuda]'` for unsloth)")
@pytest.mark.slow
class TestOnCuda:
    """Whole runs in fresh interpreters: Unsloth must be imported before TRL, which this test process has loaded."""

    def _run(self, tmp_path, backend):
        out = tmp_path / backend
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={out}", f"model.backend={backend}",
             *TINY],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "report.json").read_text())

    def test_unsloth_runs_one_grpo_step(self, tmp_path):
        pytest.importorskip("unsloth")
        report = self._run(tmp_path, "unsloth")
        assert report["backend"]["name"] == "unsloth" and report["training"]["steps"] == 1

    def test_hf_runs_one_4bit_grpo_step(self, tmp_path):
        pytest.importorskip("bitsandbytes")
        report = self._run(tmp_path, "hf")
        assert report["backend"]["name"] == "hf" and report["training"]["steps"] == 1
