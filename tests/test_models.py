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
