"""`toolkit.chat` at the model's limits: the context a GGUF is loaded with, replies cut by the new-token limit or by
a full context (said, not silent), and an index whose build did not finish.

The models are the random 2-layer Llama of test_export.py (trained context: 512 tokens), as a GGUF and as a run's
base model with a LoRA adapter.
"""

from __future__ import annotations

import io
import re

import pytest
from export_run import RECIPE
from test_export import _finished_run, _tiny_model

from toolkit import chat
from toolkit.index_store import Hit
from toolkit.recipe import load_recipe

QUESTION = "Which grape is Barolo made from?"


class Index:
    def search(self, queries, k):
        return [[Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]]


def _gguf(tmp_path, **config):
    pytest.importorskip("llama_cpp")
    from toolkit.gguf_convert import convert

    _, _, folder = _tiny_model(tmp_path, "llama", **config)
    return convert(folder, tmp_path / "tiny.gguf", "f32")


def _filling(model_tokens, context: int, room: int) -> list[dict]:
    """A user message whose prompt leaves fewer than `room` tokens of the context, and at least one."""
    words = 1
    while model_tokens([{"role": "user", "content": "Which grape " * words}]) < context - room:
        words += 16
    messages = [{"role": "user", "content": "Which grape " * words}]
    assert context - room <= model_tokens(messages) < context
    return messages


@pytest.mark.parametrize(("trained", "loaded"), [(512, 512), (16384, 8192)])
def test_a_gguf_is_loaded_with_its_trained_context_at_most(tmp_path, trained, loaded):
    # A fixed 4096: past a 512-token model's context (its replies degrade there, silently), and a model trained for
    # more was cut to it.
    model = chat.GGUFChat(_gguf(tmp_path, max_position_embeddings=trained), 8)
    try:
        assert model.llm.n_ctx() == loaded
    finally:
        model.close()


def test_a_gguf_cut_short_in_its_header_is_one_model_error(tmp_path):
    # Reading its trained context, gguf's reader raised an IndexError (a header cut short: a copy or download that
    # stopped) or a UnicodeDecodeError (an architecture name that is no UTF-8): a traceback, not llama.cpp's error.
    pytest.importorskip("llama_cpp")
    import gguf
    import numpy as np

    from toolkit.models import ModelError

    whole = tmp_path / "whole.gguf"
    writer = gguf.GGUFWriter(whole, "llama")
    writer.add_context_length(512)
    writer.add_tensor("t", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = whole.read_bytes()
    for name, broken in (("cut.gguf", data[:40]), ("arch.gguf", data.replace(b"\x05" + b"\x00" * 7 + b"llama",
                                                                              b"\x05" + b"\x00" * 7 + b"\xffama"))):
        path = tmp_path / name
        path.write_bytes(broken)
        with pytest.raises(ModelError, match=f"^{re.escape(str(path))}: llama.cpp cannot load it"):
            chat.GGUFChat(path, 8)


def test_a_gguf_reply_cut_by_the_context_or_the_limit_says_so(tmp_path, monkeypatch):
    # llama.cpp stops where the context ends, however many tokens were asked for: the reply ended there silently.
    from rich.console import Console

    model = chat.GGUFChat(_gguf(tmp_path), 100)
    try:
        def tokens(messages):
            return len(model.llm.tokenize(chat_prompt(model, messages).encode(), add_bos=False, special=True))

        text, cut = model.complete(_filling(tokens, 512, 100))
        found = re.fullmatch(r"after (\d+) tokens, when the 512-token context was full; ask a shorter question or "
                             r"retrieve fewer chunks \(-k\)", cut or "")
        assert found and 0 < int(found.group(1)) < 100, cut
        model.max_new_tokens = 3
        text, cut = model.complete([{"role": "user", "content": QUESTION}])
        assert cut == "at the 3-token limit (--max-new-tokens); raise it to see more"
        # In a session the note is part of the reply's block.
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n"))
        out = io.StringIO()
        chat._answer_questions(load_recipe(RECIPE), Index(), model, None, None, Console(file=out, width=300),
                               Console(file=io.StringIO()))
        assert "\ncut:    at the 3-token limit (--max-new-tokens); raise it to see more\nsources:\n" in out.getvalue()
    finally:
        model.close()


def chat_prompt(model, messages) -> str:
    """The prompt llama.cpp renders from the GGUF's own chat template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=model.llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")(
        messages=messages).prompt


def test_an_adapter_is_held_to_its_trained_context_and_says_where_it_cut(tmp_path):
    # transformers generated past the base model's 512 positions without a word; a reply cut at --max-new-tokens
    # was not said either.
    from toolkit.models import ModelError

    run = _finished_run(tmp_path)
    model = chat.AdapterChat(load_recipe(RECIPE, [f"output_dir={run}"]), run / "adapter", 100)

    def tokens(messages):
        return len(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"])

    text, cut = model.complete(_filling(tokens, 512, 100))
    found = re.fullmatch(r"after (\d+) tokens, when the 512-token context was full; ask a shorter question or "
                         r"retrieve fewer chunks \(-k\)", cut or "")
    assert found and 0 < int(found.group(1)) < 100, cut
    with pytest.raises(ModelError, match=r"^the prompt is too long for the model \(\d+ tokens, its context is 512\)"):
        model.complete([{"role": "user", "content": "Which grape " * 400}])
    model.max_new_tokens = 3
    assert model.complete([{"role": "user", "content": QUESTION}])[1] == \
        "at the 3-token limit (--max-new-tokens); raise it to see more"


def test_chat_refuses_an_index_whose_build_was_stopped(tmp_path, capsys, stopped_index_build):
    # It answered from the chunks the stopped build had stored, as if they were the corpus.
    from toolkit.cli import index_command

    overrides = [f"output_dir={tmp_path}", "retrieval.write_batch_size=16"]
    assert stopped_index_build(["recipes/wine.yaml", *overrides], at=2) == 130
    capsys.readouterr()
    assert chat.main(["recipes/wine.yaml", *overrides, "--question", QUESTION]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (f"error: the index at {tmp_path}/index is incomplete (its last build failed or was stopped); "
                   f"build it with: {index_command('recipes/wine.yaml', overrides)}")
