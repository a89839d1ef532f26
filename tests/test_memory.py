"""Tests for toolkit.memory: the GPU memory estimate on a Qwen2.5-1.5B-shaped config, and the preflight refusal,
both on a CPU with a made-up GPU size."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import Qwen2Config

from toolkit import memory
from toolkit.memory import GIB, MemoryPreflightError, ModelShape, check_fits, estimate_memory
from toolkit.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
WINE = ROOT / "recipes" / "wine.yaml"
# A T4-sized GRPO set-up on all layers (the wine recipe adapts only SmolLM2's upper layers).
GPU_SIZES = ["training.num_generations=8", "training.per_device_train_batch_size=8",
             "training.max_completion_length=256", "training.lora.layers_to_transform=null", "model.dtype=bfloat16"]


@pytest.fixture(scope="module")
def qwen():
    """Qwen2.5-1.5B's shape, built locally: nothing is downloaded."""
    return Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                       intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True)


def recipe(*overrides):
    return load_recipe(WINE, [*GPU_SIZES, *overrides])


def test_shape_counts_qwen_parameters(qwen):
    shape = ModelShape.from_config(qwen)
    assert (shape.head_dim, shape.kv_heads) == (128, 2)
    # Qwen2.5-1.5B has 1.54 B parameters; the estimate leaves out biases and norms (under 0.1%).
    assert shape.linear_params + shape.embedding_params == pytest.approx(1.5437e9, rel=0.002)


def test_4bit_shrinks_the_weights_to_about_a_third(qwen):
    full = estimate_memory(qwen, recipe(), prompt_tokens=300)
    quantized = estimate_memory(qwen, recipe("model.load_in_4bit=true"), prompt_tokens=300)
    assert full.parts["weights"] == pytest.approx(1.5437e9 * 2, rel=0.01)  # bf16
    assert quantized.parts["weights"] < full.parts["weights"] / 2.5  # the tied embedding stays 16-bit
    assert quantized.total < full.total


def test_generation_kv_cache_follows_the_formula(qwen):
    r = recipe("eval.batch_size=1", "eval.max_new_tokens=1")
    estimate = estimate_memory(qwen, r, prompt_tokens=300)
    # 8 sequences × (300 + 256) tokens × 28 layers × (K and V) × 2 kv heads × 128 dims × 2 bytes
    kv = 8 * (300 + 256) * 28 * 2 * 2 * 128 * 2
    sampling_logits = 8 * 151936 * 4
    assert estimate.parts["generation"] == kv + sampling_logits


def test_lora_states_count_adapter_weights_grads_and_adam(qwen):
    estimate = estimate_memory(qwen, recipe(), prompt_tokens=300)
    # r × (in + out) per adapted linear, 7 per layer, 28 layers
    per_layer = 16 * ((1536 + 1536) + 2 * (1536 + 256) + (1536 + 1536) + 2 * (1536 + 8960) + (8960 + 1536))
    assert estimate.parts["lora"] == 28 * per_layer * 4
    assert estimate.parts["lora_states"] == 28 * per_layer * 12


@pytest.mark.parametrize("knobs, part", [
    (["training.num_generations=16", "training.per_device_train_batch_size=16"], "generation"),
    (["training.gradient_accumulation_steps=2"], "generation"),  # the generation batch spans the accumulation
    (["training.per_device_train_batch_size=16"], "backward"),
    (["training.max_completion_length=512"], "generation"),
    (["training.max_completion_length=512"], "backward"),
])
def test_bigger_knobs_need_more(qwen, knobs, part):
    assert estimate_memory(qwen, recipe(*knobs), 300).parts[part] > estimate_memory(qwen, recipe(), 300).parts[part]


def test_adapting_fewer_layers_shortens_the_backward(qwen):
    upper = recipe("training.lora.layers_to_transform=[20, 21, 22, 23, 24, 25, 26, 27]")
    assert estimate_memory(qwen, upper, 300).parts["backward"] < estimate_memory(qwen, recipe(), 300).parts["backward"]


def test_checkpointing_and_unsloth_need_less_for_the_backward(qwen):
    plain = estimate_memory(qwen, recipe(), 300).parts["backward"]
    checkpointed = estimate_memory(qwen, recipe("training.trl={gradient_checkpointing: true}"), 300).parts["backward"]
    unsloth = estimate_memory(qwen, recipe(), 300, backend="unsloth").parts["backward"]
    assert unsloth < checkpointed < plain


def test_a_t4_fits_with_4bit_but_not_without_it(qwen):
    t4_free = int(14.5 * GIB)
    check_fits(estimate_memory(qwen, recipe("model.load_in_4bit=true"), 300, backend="unsloth"), t4_free,
               recipe("model.load_in_4bit=true"))
    with pytest.raises(MemoryPreflightError):
        check_fits(estimate_memory(qwen, recipe("model.dtype=float32"), 300), t4_free, recipe("model.dtype=float32"))


def test_refusal_gives_the_numbers_and_the_knobs(qwen):
    r = recipe()
    estimate = estimate_memory(qwen, r, 300)
    with pytest.raises(MemoryPreflightError) as err:
        check_fits(estimate, 2 * GIB, r, "Tesla T4")
    message = str(err.value)
    assert isinstance(err.value, RecipeError)  # toolkit.run prints it as one error line, exit status 2
    assert "\n" not in message
    assert f"about {estimate.total / GIB:.1f} GiB" in message and "2.0 GiB is free on Tesla T4" in message
    for knob in ("model.load_in_4bit=true", "training.num_generations", "training.max_completion_length",
                 "training.per_device_train_batch_size"):
        assert knob in message
    assert "TOOLKIT_SKIP_MEMORY_CHECK=1" in message


def test_refusal_does_not_suggest_4bit_twice(qwen):
    r = recipe("model.load_in_4bit=true")
    with pytest.raises(MemoryPreflightError) as err:
        check_fits(estimate_memory(qwen, r, 300), GIB // 4, r)
    assert "load_in_4bit" not in str(err.value)


def test_preflight_on_a_fake_gpu_reads_the_local_config_and_refuses(monkeypatch):
    """The whole preflight on the packaged model's folder, with torch told there is a GPU with 100 MiB free."""
    import torch

    from toolkit.models import resolve_model

    r = load_recipe(WINE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (100 * 1024**2, 16 * GIB))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    rows = [{"prompt": [{"role": "user", "content": "Which grape is Barolo made from? " * 20}]}]
    with pytest.raises(MemoryPreflightError, match="free on Fake GPU"):
        memory.preflight(r, resolve_model(r.model.name_or_path), rows)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (15 * GIB, 16 * GIB))
    estimate = memory.preflight(r, resolve_model(r.model.name_or_path), rows)
    assert 0 < estimate.total < 15 * GIB
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    assert memory.preflight(r, resolve_model(r.model.name_or_path), rows) is None


def test_preflight_on_a_fake_gpu_reports_an_unreadable_model_in_one_line(monkeypatch, tmp_path):
    # A hub id offline, or a folder whose config transformers cannot read: a traceback before this.
    import torch

    from toolkit.models import ModelError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    for model in ("no-such-org/no-such-model", str(tmp_path)):
        with pytest.raises(ModelError) as err:
            memory.preflight(load_recipe(WINE), model, [])
        message = str(err.value)
        assert message.startswith(f"model {model}: cannot read its config and tokenizer for the memory preflight: ")
        assert "\n" not in message


def test_preflight_on_a_fake_gpu_refuses_a_template_the_prompts_cannot_go_through(monkeypatch, tmp_path):
    # It measures the prompts through the chat template before the model loads: a tokenizer without one, or a
    # template that refuses a system turn (Gemma's), was a traceback there, before the one-line errors after it.
    import shutil

    import torch

    from toolkit.models import ModelError, resolve_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    packaged = Path(resolve_model("packaged:smollm2-135m-instruct"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(packaged / name, tmp_path / name)
    rows = [{"prompt": [{"role": "user", "content": "Which grape is Barolo made from?"}]}]
    with pytest.raises(ModelError, match=f"^model {tmp_path}: its tokenizer has no chat template; use an "):
        memory.preflight(load_recipe(WINE), str(tmp_path), rows)
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ModelError, match=r"^prompt: the model's chat template refuses the recipe's messages \(System"):
        memory.preflight(load_recipe(WINE), str(tmp_path), rows)


def test_preflight_does_nothing_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory.preflight(load_recipe(WINE), "no/such/model", []) is None


def test_8bit_adam_halves_the_adapter_states(qwen):
    plain = estimate_memory(qwen, recipe(), 300).parts["lora_states"]
    assert estimate_memory(qwen, recipe("training.trl={optim: adamw_8bit}"), 300).parts["lora_states"] == plain // 2


def test_the_gpu_recipe_fits_a_t4_by_the_estimate(qwen):
    """recipes/wine-r1.yaml is sized for a 16 GB T4 (about 14.5 GiB free) with Unsloth; R1-Distill-Qwen-1.5B has
    Qwen2.5-1.5B's shape except untied embeddings. Its prompts are about 350 tokens."""
    r1 = load_recipe(ROOT / "recipes" / "wine-r1.yaml")
    untied = Qwen2Config(**{**qwen.to_dict(), "tie_word_embeddings": False})
    estimate = estimate_memory(untied, r1, prompt_tokens=400, backend=r1.model.backend)
    check_fits(estimate, int(14.5 * GIB), r1, "Tesla T4")
    assert estimate.total < 10 * GIB
