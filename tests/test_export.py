"""Export: adapter, merged model, GGUF files and their verification, after a real (tiny) training run.

The slow tests share one 1-step GRPO run whose recipe asks `toolkit.run` to export at the end (tests/export_run.py);
the converter is also checked on tiny random Llama and Qwen2 models, and the error paths without any model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from export_run import FORMATS, RECIPE, ROOT, exported_run

from toolkit import export as export_mod
from toolkit import run_record
from toolkit.export_folder import sha256_file
from toolkit.gguf_convert import ConvertError, check_architecture, convert
from toolkit.recipe import load_recipe
from toolkit.verify import first_divergence, llama_greedy, load_llama, require_llama_cpp, verification_messages

N_TOKENS = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return exported_run(tmp_path_factory)


@pytest.fixture(scope="module")
def recipe(run_dir):
    return load_recipe(RECIPE, [f"output_dir={run_dir}"])


@pytest.fixture(scope="module")
def manifest(run_dir):
    return json.loads((run_dir / "export" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def prompt_ids(recipe, run_dir):
    """The three verification prompts (eval questions with retrieved context), tokenized as the merged model does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export" / "merged")
    _, prompts = verification_messages(recipe, 3)
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
            for m in prompts]


def greedy(model, ids: list[int], n: int = N_TOKENS) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=2)
    return out[0, len(ids):].tolist()


@pytest.mark.slow
def test_merged_generates_like_base_plus_adapter(run_dir, prompt_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    report = json.loads((run_dir / "report.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(report["model_path"], dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    assert any(torch.count_nonzero(p) for n, p in tuned.named_parameters() if "lora_B" in n), "the LoRA never moved"
    merged_dir = run_dir / "export" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    for ids in prompt_ids:
        assert greedy(merged, ids) == greedy(tuned, ids)
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (merged_dir / "tokenizer_config.json").read_text()


@pytest.mark.slow
def test_f32_gguf_reproduces_transformers_greedy_tokens(run_dir, prompt_ids):
    """The merge is float32 (the CPU path), so the F32 file is the exact one; see test_manifest for F16."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "export" / "merged", dtype=torch.float32).eval()
    llm = load_llama(run_dir / "export" / "model-f32.gguf")
    for ids in prompt_ids:
        expected = greedy(merged, ids)
        assert llama_greedy(llm, ids, N_TOKENS, {2}) == expected
    llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("name, file_type", [("model-q8_0.gguf", 7), ("model-q4_k_m.gguf", 15)])
def test_quantized_files_load_and_generate(run_dir, prompt_ids, name, file_type):
    from gguf import GGUFReader

    path = run_dir / "export" / name
    reader = GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == file_type  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
    llm = load_llama(path)
    # Loaded without the extra buffer types (with them, quantized decoding segfaulted on an AMX Xeon), and the
    # swapped default params are restored for everyone else.
    assert llm.model_params.use_extra_bufts is False
    assert require_llama_cpp().llama_cpp.llama_model_default_params().use_extra_bufts is True
    tokens = llama_greedy(llm, prompt_ids[0], 8, {2})
    assert tokens and llm.detokenize(tokens).strip()
    llm.close()


@pytest.mark.slow
def test_merged_and_gguf_open_replies_as_in_training(recipe, run_dir):
    # A recipe with prompt.open_think trains the model to continue "<think>", so its exports must prompt the same
    # way; one without it (wine.yaml) must export the base model's template unchanged.
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export" / "merged")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered.endswith("assistant\n<think>") is recipe.prompt.open_think
    template = GGUFReader(run_dir / "export" / "model-f16.gguf").fields["tokenizer.chat_template"].contents()
    assert template == tokenizer.chat_template


@pytest.mark.slow
def test_manifest_lists_every_file_with_size_hash_and_verification(run_dir, manifest):
    out = run_dir / "export"
    assert manifest["ok"] is True and manifest["formats"] == FORMATS
    assert manifest["merge_dtype"] == "float32" and manifest["exact_format"] == "gguf-f32"
    assert len(manifest["verify_prompts"]) == 3
    entries = {entry["format"]: entry for entry in manifest["files"]}
    assert list(entries) == FORMATS
    for fmt in ("adapter", "merged"):
        files = entries[fmt]["files"]
        assert files and entries[fmt]["bytes"] == sum(f["bytes"] for f in files)
        for f in files:
            assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert any(f["path"] == "adapter/adapter_model.safetensors" for f in entries["adapter"]["files"])
    for fmt, quant in (("gguf-f32", "F32"), ("gguf-f16", "F16"), ("gguf-q8_0", "Q8_0"), ("gguf-q4_k_m", "Q4_K_M")):
        entry = entries[fmt]
        path = out / entry["path"]
        assert entry["quant_type"] == quant and entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
        check = entry["verify"]
        assert len(check["prompts"]) == 3 and check["tokenizer_match"] is True and check["ok"] is True
    f32 = entries["gguf-f32"]["verify"]
    assert f32["required"] == "exact" and f32["match"] is True and f32["first_divergence"] is None
    for fmt in ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"):  # rounded weights may diverge; where is reported
        check = entries[fmt]["verify"]
        assert check["required"] == "loads and generates"
        assert check["match"] == (check["first_divergence"] is None)
        assert check["match"] or 0 <= check["first_divergence"] <= N_TOKENS
    sizes = [entries[fmt]["bytes"] for fmt in ("gguf-q4_k_m", "gguf-q8_0", "gguf-f16", "gguf-f32")]
    assert sizes == sorted(sizes)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files or work folders left


# ---------------------------------------------------------------------------- converter on tiny random models


def _tiny_model(tmp_path, arch: str, **config):
    """A random 2-layer model of `arch` with the packaged SmolLM2 tokenizer (no hub needed); weights larger than
    the default init, so the logits are not all close to zero."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from toolkit.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("packaged:smollm2-135m-instruct"))
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                  eos_token_id=2, pad_token_id=2, tie_word_embeddings=arch == "qwen2") | config
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, rope_theta=10000.0))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=1000000.0))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer, folder


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_converter_matches_transformers_on_tiny_models(tmp_path, arch):
    """Same tokens, same next-token logits: tensor names, the Llama q/k permutation, Qwen2's biases and tied
    embeddings, GQA and the vocab all have to be right. Logits, not greedy text: a random model's top two
    logits are often close enough for float rounding to swap them."""
    import numpy as np

    model, tokenizer, folder = _tiny_model(tmp_path, arch)
    path = convert(folder, tmp_path / f"{arch}.gguf", "f32")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    llm = load_llama(path, n_ctx=256, logits_all=True)
    messages = [{"role": "user", "content": "Which grape is Barolo made from?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    llm.close()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - expected).max() < 1e-2 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("open_think", [True, False])
def test_merge_saves_the_template_training_prompted_with(tmp_path, open_think):
    """export.merge, not only the run above (wine.yaml, open_think off): with prompt.open_think the merged
    model's template, and so the GGUF's, ends each prompt with the "<think>" training opened replies with; without
    it the template is the base model's. And the merged weights are base + LoRA, not the base alone."""
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.recipe import PromptSection

    model, tokenizer, folder = _tiny_model(tmp_path, "llama")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        expected = lora(ids).logits
    prompt = PromptSection(system="Answer from the context.", open_think=open_think)
    export_mod.merge(str(folder), tmp_path / "adapter", "float32", tmp_path / "merged", prompt)

    merged = AutoTokenizer.from_pretrained(tmp_path / "merged")
    rendered = merged.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                          tokenize=False)
    base = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                         tokenize=False)
    assert rendered == (base + "<think>" if open_think else base)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    template = GGUFReader(convert(tmp_path / "merged", tmp_path / "m.gguf", "f32")).fields["tokenizer.chat_template"]
    assert template.contents() == merged.chat_template


# --------------------------------------------------------------------------------------------- error paths


def test_unsupported_architecture_lists_supported_ones(tmp_path, capsys):
    with pytest.raises(ConvertError, match="supported: LlamaForCausalLM, Qwen2ForCausalLM"):
        check_architecture({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    # Through the command: a run whose base is a GPT-2 fails before any merging, with one line and status 2.
    from transformers import GPT2Config

    base = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(base)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "report.json").write_text(json.dumps({"model_path": str(base)}))
    status = export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "gguf-f16", "export.verify=false"])
    assert status == 2
    assert "'GPT2LMHeadModel'" in capsys.readouterr().err
    assert not (run / "export" / "merged").exists()


def test_tokenizer_ids_past_the_embedding_rows_are_refused(tmp_path):
    """A token id with no embedding row would make llama.cpp read outside the matrix: refused, nothing written."""
    _, tokenizer, folder = _tiny_model(tmp_path, "llama", vocab_size=1000)
    with pytest.raises(ConvertError, match=rf"ids up to {len(tokenizer) - 1}, but the model has only 1000 embedding"):
        convert(folder, tmp_path / "out.gguf", "f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama"]


def test_corrupt_run_report_names_the_file(tmp_path, capsys):
    # The base model comes from the run's report.json: a broken one is a one-line error naming it, status 2.
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    report = run / "report.json"
    for text, message in (('{"model_path": "m"', "unreadable run report"), ("[]", "not a run report")):
        report.write_text(text)
        assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "adapter"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{report}: {message}" in err, err
        assert not (run / "export" / "adapter").exists()


def test_missing_llama_cpp_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(export_mod.ExportError, match=r"pip install -e '\.\[export\]'"):
        export_mod.check_export_ready(["adapter", "gguf-q8_0"], verify=False)
    export_mod.check_export_ready(["adapter", "merged", "gguf-f16"], verify=False)  # needs no llama.cpp


def test_formats_are_checked(tmp_path):
    assert export_mod.parse_formats("gguf-f16, adapter") == ["gguf-f16", "adapter"]
    with pytest.raises(export_mod.ExportError, match="choose from adapter, merged, gguf-f32"):
        export_mod.parse_formats("gguf-q3")
    with pytest.raises(export_mod.ExportError, match="no adapter in"):
        export_mod.export(load_recipe(RECIPE, [f"output_dir={tmp_path}"]))


def test_run_flags_take_a_home_folder_and_name_the_run_of_an_adapter(tmp_path, capsys, monkeypatch):
    # `--run=~/x` reaches the program with its `~` (the shell expands only a word that starts with it).
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r" / "adapter").mkdir(parents=True)
    (tmp_path / "r" / "adapter" / "adapter_config.json").write_text("{}")
    assert export_mod.main(["recipes/wine.yaml", "--run=~/r/adapter", "--formats", "adapter"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"no adapter in {tmp_path}/r/adapter/adapter: did you mean --run {tmp_path}/r?" in err, err
    assert not os.path.exists("~")


def test_verification_without_context_says_why(tmp_path, caplog):
    # An index refused as chunked otherwise (or incomplete) was logged as "no index under <run>".
    from toolkit.data import load_documents
    from toolkit.index import build_index

    build_index(load_recipe(RECIPE, [f"output_dir={tmp_path}"]), load_documents([ROOT / "data/wine/docs.jsonl"]))
    other = load_recipe(RECIPE, [f"output_dir={tmp_path}", "retrieval.chunk_size=64"])
    with caplog.at_level("INFO", logger="toolkit.verify"):
        questions, messages = verification_messages(other, 2)
    assert len(questions) == len(messages) == 2
    assert (f"the index at {tmp_path / 'index'} was built with retrieval.chunk_size 128, not 64: verification "
            "prompts carry no context") in caplog.messages
    caplog.clear()
    with caplog.at_level("INFO", logger="toolkit.verify"):
        verification_messages(load_recipe(RECIPE, [f"output_dir={tmp_path / 'none'}"]), 1)
    assert caplog.messages == [f"no index at {tmp_path / 'none' / 'index'}: verification prompts carry no context"]


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("flag", ["--formats", "--run"])
def test_empty_flag_values_are_refused(tmp_path, capsys, flag):
    # Not silently the default: --formats '' used to run the whole default export.
    with pytest.raises(SystemExit) as exit_:
        export_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}", f"{flag}="])
    assert exit_.value.code == 2
    assert f"argument {flag}: must not be empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [5, ["a"], "", "/nonexistent/model", "./no/such/model"])
def test_a_bad_model_path_in_the_run_report_names_the_file_and_field(tmp_path, capsys, value):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    report = run / "report.json"
    report.write_text(json.dumps({"model_path": value}))
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged"]) == 2
    err = capsys.readouterr().err
    assert f"{report}: model_path" in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not (run / "export").exists()


def test_an_unreachable_hub_base_is_one_line(tmp_path, capsys):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (tests/conftest.py sets it) not to wait on the network")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "report.json").write_text(json.dumps({"model_path": "no-such-owner/no-such-model"}))
    status = export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "gguf-f16", "export.verify=false"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "base model no-such-owner/no-such-model: cannot read its config: OSError" in " ".join(err.split())


@pytest.mark.parametrize("defect", ["config not JSON", "config a list", "weights truncated", "rank differs"])
def test_a_broken_adapter_is_one_line_and_leaves_no_export(tmp_path, capsys, defect):
    from test_models import broken_adapter

    model, _, base = _tiny_model(tmp_path, "llama")
    run = tmp_path / "run"
    run.mkdir()
    broken_adapter(run / "adapter", model, defect)
    (run / "report.json").write_text(json.dumps({"model_path": str(base)}))
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "adapter,merged"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{run / 'adapter'}: not a loadable LoRA adapter: " in err, err
    assert not (run / "export").exists()  # not even an empty folder


def _finished_run(tmp_path) -> Path:
    """A run folder as toolkit.run leaves it, for export: a tiny llama's LoRA adapter and a report naming the base."""
    from test_models import broken_adapter

    model, _, base = _tiny_model(tmp_path, "llama")
    run = tmp_path / "run"
    run.mkdir()
    broken_adapter(run / "adapter", model, "none")
    (run / "report.json").write_text(json.dumps({"model_path": str(base)}))
    return run


def test_a_run_folder_with_brackets_is_named_as_it_is(tmp_path, capsys):
    run = _finished_run(tmp_path).rename(tmp_path / "run[b]")  # "[b]" vanished as a rich markup tag
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "adapter"]) == 0
    assert f"manifest: {run / 'export' / 'manifest.json'}" in " ".join(capsys.readouterr().out.split())


def test_an_export_folder_that_is_a_file_is_one_line(tmp_path, capsys):

    run = _finished_run(tmp_path)
    (run / "export").write_text("x")
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "adapter"]) == 2
    assert f"{run / 'export'} is a file, not a folder" in " ".join(capsys.readouterr().err.split())
    assert (run / "export").read_text() == "x"


@pytest.mark.parametrize("blocker, kind, formats", [
    ("manifest.json", "folder", "adapter"),
    ("model-f16.gguf", "folder", "gguf-f16"),
    ("merged", "file", "merged"),
    ("merged", "link", "merged"),
])
def test_an_output_in_the_way_is_one_line_before_any_work(tmp_path, capsys, blocker, kind, formats):

    run = _finished_run(tmp_path)
    (run / "export").mkdir()
    if kind == "link":
        (run / "export" / blocker).symlink_to(tmp_path)
    else:
        (run / "export" / blocker).mkdir() if kind == "folder" else (run / "export" / blocker).write_text("x")
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", formats]) == 2
    err = " ".join(capsys.readouterr().err.split())
    what = {"folder": "a file is written there", "file": "a folder is written there",
            "link": "a folder replaces it whole; link the output folder instead"}[kind]
    assert f"{run / 'export' / blocker} is a {kind}, and {what}; move it away" in err, err
    assert sorted(p.name for p in (run / "export").iterdir()) == [blocker]  # nothing else written


def test_files_left_by_an_earlier_export_are_named_not_described(tmp_path, caplog):
    # `--formats adapter` after a GGUF export: the old model-f16.gguf may hold another adapter's weights.

    from toolkit.recipe import load_recipe

    run = _finished_run(tmp_path)
    (run / "export" / "merged").mkdir(parents=True)
    (run / "export" / "model-f16.gguf").write_text("old")
    manifest = export_mod.export(load_recipe("recipes/wine.yaml"), run, ["adapter"])
    assert [entry["path"] for entry in manifest["files"]] == ["adapter/"]
    # Nothing merged or converted: no merge precision, no GGUF to reproduce it (both were the defaults' once).
    assert manifest["merge_dtype"] is None and manifest["exact_format"] is None
    assert manifest["older_files"] == ["merged/", "model-f16.gguf"]
    assert json.loads((run / "export" / "manifest.json").read_text())["older_files"] == ["merged/", "model-f16.gguf"]
    assert f"{run / 'export' / 'model-f16.gguf'} is left from an earlier export, not made by this one" in caplog.text


# ------------------------------------------------------------------------- the prompt the run trained with


def record_prompt(run: Path, **changes) -> None:
    """Record in the run's report.json, as toolkit.run does, wine.yaml's recipe with its prompt changed so."""
    report = json.loads((run / "report.json").read_text())
    report["recipe"] = load_recipe(RECIPE).model_dump(mode="json")
    report["recipe"]["prompt"] |= changes
    (run / "report.json").write_text(json.dumps(report))


def test_an_export_with_another_prompt_than_the_run_is_refused(tmp_path, capsys):
    # Trained with prompt.open_think, exported with the recipe alone: the merged template would lose its <think>.
    run = _finished_run(tmp_path)
    record_prompt(run, open_think=True)
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("error: prompt.open_think is true in the run (report.json) but false here: export with the overrides "
            "the run trained with (prompt.open_think=true)") in err, err
    assert not (run / "export").exists()
    # With the run's overrides it exports, and the template opens replies as in training.
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged", "prompt.open_think=true"]) \
        == 0
    assert "<think>" in (run / "export" / "merged" / "chat_template.jinja").read_text()


def test_prompt_differences_compare_with_the_prompt_report_json_records(tmp_path):
    run = _finished_run(tmp_path)
    recipe = load_recipe(RECIPE)
    assert run_record.prompt_differences(recipe, run) == []  # a report without a recipe: nothing to compare
    record_prompt(run)
    assert run_record.prompt_differences(recipe, run) == []  # the same prompt
    record_prompt(run, open_think=True, system="Answer.")
    differences = run_record.prompt_differences(recipe, run)
    assert differences == [("prompt.system", "Answer.", recipe.prompt.system), ("prompt.open_think", True, False)]
    assert run_record.prompt_mismatch(differences, "export") == (
        f'prompt.system is "Answer." in the run (report.json) but {json.dumps(recipe.prompt.system)[:57]}... here '
        '(and prompt.open_think): export with the overrides the run trained with (prompt.system="Answer.", '
        'prompt.open_think=true)')
    # A report from before open_think existed: that run trained without it.
    report = json.loads((run / "report.json").read_text())
    del report["recipe"]["prompt"]["open_think"], report["recipe"]["prompt"]["system"]
    (run / "report.json").write_text(json.dumps(report))
    assert run_record.prompt_differences(load_recipe(RECIPE, ["prompt.open_think=true"]), run) == [
        ("prompt.open_think", False, True)]
    # A long value is not repeated as an override: report.json holds it.
    record_prompt(run, system="x" * 100)
    assert run_record.prompt_mismatch(run_record.prompt_differences(recipe, run), "chat").endswith(
        "chat with the overrides the run trained with (prompt.system as report.json's recipe)")
    # An interrupted run has no report, and an adapter-only export ships no template: neither is checked.
    assert export_mod.export(recipe, run, ["adapter"])["ok"]
    (run / "report.json").unlink()
    assert run_record.prompt_differences(recipe, run) == []


# ----------------------------------------------------------------- a cleared model cache, a killed export


def gone_packaged_base(tmp_path, monkeypatch, recorded_name="packaged:smollm2-135m-instruct"):
    """A finished run of the tiny Llama trained as `recorded_name`, whose report.json's model_path is a cache
    folder that is gone (a cleared cache, another XDG_CACHE_HOME). The current cache is tmp_path/cache, where the
    packaged model "converts" again as a copy of the tiny Llama (no 500 MB conversion); returns (run, conversions),
    the cache folders converted into."""
    import importlib.metadata
    import shutil

    from test_models import broken_adapter

    from toolkit import models

    model, _, base = _tiny_model(tmp_path, "llama")  # before XDG_CACHE_HOME moves: it reads the real cache
    spec = models.PACKAGED_LLMS["smollm2-135m-instruct"]
    folder = f"smollm2-135m-instruct-{importlib.metadata.version(spec.distribution)}-r{models.CONVERSION_REVISION}"
    run = tmp_path / "run"
    run.mkdir()
    broken_adapter(run / "adapter", model, "none")
    report = {"model_path": str(tmp_path / "old-cache" / "toolkit" / folder),
              "recipe": {"model": {"name_or_path": recorded_name, "cache_dir": None}}}
    (run / "report.json").write_text(json.dumps(report))
    conversions = []

    def convert(key, spec, cache_dir):
        conversions.append(cache_dir)
        shutil.copytree(base, cache_dir / folder, dirs_exist_ok=True)
        return cache_dir / folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_convert_packaged", convert)
    return run, conversions


def test_an_adapter_export_needs_no_base_model(tmp_path, monkeypatch):
    # Its base gone and not makeable (a local folder), the run's adapter still exports: it never loads the base.
    run, conversions = gone_packaged_base(tmp_path, monkeypatch, recorded_name="/old/models/base")
    manifest = export_mod.export(load_recipe(RECIPE), run, ["adapter"])
    assert [entry["path"] for entry in manifest["files"]] == ["adapter/"]
    assert manifest["base_model"] == json.loads((run / "report.json").read_text())["model_path"]  # as recorded
    assert conversions == []
    # An unfinished run (no report): the base the adapter names, not the recipe's model.
    (run / "report.json").unlink()
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/trained/on/this"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    assert export_mod.export(load_recipe(RECIPE), run, ["adapter"])["base_model"] == "/trained/on/this"


def test_a_packaged_base_whose_cache_is_gone_is_made_again(tmp_path, monkeypatch, caplog):
    run, conversions = gone_packaged_base(tmp_path, monkeypatch)
    gone = json.loads((run / "report.json").read_text())["model_path"]
    caplog.set_level("INFO", logger="toolkit")  # the message comes from toolkit.run_record
    manifest = export_mod.export(load_recipe(RECIPE), run, ["merged"])
    assert conversions == [tmp_path / "cache" / "toolkit"]  # the current cache, not the one the run used
    again = str(tmp_path / "cache" / "toolkit" / os.path.basename(gone))
    assert manifest["base_model"] == again and (run / "export" / "merged" / "config.json").is_file()
    assert manifest["merge_dtype"] == "float32" and manifest["exact_format"] is None  # merged, no GGUF made
    assert f"base model {gone} is gone" in caplog.text and f"made again from its package: {again}" in caplog.text
    assert "may not fit" not in caplog.text  # the same package version and conversion


def test_a_gone_base_that_is_not_packaged_is_one_line_with_a_hint(tmp_path, monkeypatch, capsys):
    run, conversions = gone_packaged_base(tmp_path, monkeypatch, recorded_name="/old/models/base")
    capsys.readouterr()  # the tiny model's saving progress bar
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and conversions == [], err
    assert f"{run / 'report.json'}: model_path: model " in " ".join(err.split())
    assert "no such folder; the run trained that base model, and it is gone (a model cache cleared or moved?)" \
        in " ".join(err.split())


def test_an_export_removes_what_a_killed_export_left(tmp_path, caplog):
    import subprocess


    run = _finished_run(tmp_path)
    out = run / "export"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # reaped: its pid names no process now
    live = os.getpid()  # as if a second export were running beside this one
    killed = [f".work-{dead.pid}-k1ll3d_x", f".merged.{dead.pid}.0badc0de", f".adapter.{dead.pid}.12345678"]
    kept = [f".work-{live}-runn1ng_", f".merged.{live}.0badc0de", ".merged.old"]  # .old: save_dir_atomic's own
    for name in killed + kept:
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"half")
    for name in (f".model-f16.gguf.{dead.pid}.tmp", f".manifest.json.{dead.pid}.89abcdef"):
        killed.append(name)
        (out / name).write_text("half")
    kept.append(f".notes.{dead.pid}.tmp")  # not a name an export writes
    (out / kept[-1]).write_text("mine")
    caplog.set_level("INFO", logger="toolkit.export")
    export_mod.export(load_recipe(RECIPE), run, ["adapter"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(kept)
    assert f"removed what an interrupted export left in {out}: {', '.join(sorted(killed))}" in caplog.text


@pytest.mark.parametrize("blocker, kind", [("merged", "link"), ("manifest.json", "folder"), ("", "file")])
def test_a_run_with_an_export_section_checks_export_before_any_work(tmp_path, capsys, monkeypatch, blocker, kind):
    # The whole run (evaluations, training, report) used to finish before export/'s obstacle was found.
    import toolkit.run

    (tmp_path / "export").parent.mkdir(exist_ok=True)
    where = tmp_path / "export" / blocker if blocker else tmp_path / "export"
    where.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        where.symlink_to(tmp_path / "elsewhere")
    else:
        where.mkdir() if kind == "folder" else where.write_text("x")
    monkeypatch.setattr("toolkit.prompts.build_splits", lambda recipe: pytest.fail("worked before checking export/"))
    assert toolkit.run.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "export.formats=[merged, gguf-f32]",
                             "export.verify=false"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {where} is a {kind}" in err and "move it away" in err, err


def test_an_export_that_stops_mid_way_leaves_no_manifest_of_the_earlier_one(tmp_path, monkeypatch):
    # `--formats adapter`, then `--formats merged,gguf-f32` killed after merged/: the adapter export's manifest
    # (ok: true) stayed beside the new merged/, describing an export/ that no longer was.
    from toolkit import gguf_convert

    run = _finished_run(tmp_path)
    recipe = load_recipe(RECIPE, ["export.verify=false"])
    out = run / "export"
    assert export_mod.export(recipe, run, ["adapter"])["ok"]

    def killed(merged_dir, target, ftype):
        raise RuntimeError("killed")  # as far as export/ goes, a kill -9 here: nothing is written after it

    monkeypatch.setattr(gguf_convert, "convert", killed)
    with pytest.raises(RuntimeError, match="killed"):
        export_mod.export(recipe, run, ["merged", "gguf-f32"])
    assert (out / "merged" / "config.json").is_file()  # the new merged/ is there: the export had begun writing
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "merged"]


def _complete_checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


@pytest.mark.parametrize("elsewhere", [False, True])
def test_an_interrupted_run_is_resumed_or_its_checkpoint_used(tmp_path, capsys, elsewhere):
    # A run killed after a checkpoint has trainer/checkpoint-N but no adapter/: "train first" sent the user to
    # start over, when --resume finishes it and the checkpoint is a LoRA adapter already.
    run = tmp_path / "run"
    _complete_checkpoint(run / "trainer", 4)
    latest = _complete_checkpoint(run / "trainer", 8)
    (run / "trainer" / "checkpoint-10").mkdir()  # killed while saving it: no trainer_state.json
    args = ["--run", str(run)] if elsewhere else [f"output_dir={run}"]
    assert export_mod.main(["recipes/wine.yaml", *args, "--formats", "adapter"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    resume = f"python -m toolkit.run RECIPE output_dir={run} --resume" if elsewhere else \
        "python -m toolkit.run RECIPE --resume"
    assert f"no adapter in {run / 'adapter'}: the run stopped before its end: " in err, err
    assert f"({resume})" in err, err
    assert f"its latest checkpoint, itself a LoRA adapter: --adapter {latest} with toolkit.chat or toolkit.evaluate" \
        in err, err
    assert "train first" not in err
    assert not (run / "export").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "export", interrupted)  # Ctrl-C while merging or converting
    try:
        code = export_mod.main(["recipes/wine.yaml", "--run", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    captured = capsys.readouterr()
    assert code == 130 and not captured.out
    assert captured.err.strip() == "interrupted"


@pytest.mark.parametrize("finished", [False, True])
def test_a_checkpoint_given_as_run_names_its_run(tmp_path, capsys, finished):
    # --run <run>/trainer/checkpoint-N said "did you mean --run <run>/trainer?", which is no run either.
    run = tmp_path / "run"
    checkpoint = _complete_checkpoint(run / "trainer", 4)
    if finished:
        (run / "report.json").write_text("{}")
        with pytest.raises(SystemExit) as exit_:
            export_mod.main(["recipes/wine.yaml", "--run", str(checkpoint), "--formats", "adapter"])
        assert exit_.value.code == 2
    else:
        assert export_mod.main(["recipes/wine.yaml", "--run", str(checkpoint), "--formats", "adapter"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--run {run}" in err and f"--run {run / 'trainer'}" not in err, err
    assert not (checkpoint / "export").exists()


def test_a_read_only_run_folder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import errno

    run = _finished_run(tmp_path)
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # the run folder on a read-only disk (chmod does not stop root)
        if str(path).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "adapter"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{run / 'export'}: cannot make a folder in {run} (Read-only file system)" in " ".join(err.split())


def test_a_full_disk_mid_way_is_one_line_and_leaves_no_export(tmp_path, capsys, monkeypatch):
    import errno

    from toolkit import gguf_convert

    run = _finished_run(tmp_path)

    def full(merged_dir, target, ftype):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(gguf_convert, "convert", full)
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged,gguf-f32",
                            "export.verify=false"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the export to {run / 'export'} failed: No space left on device" in err, err
    assert not (run / "export").exists()


def test_a_full_disk_while_saving_the_merged_weights_is_one_line(tmp_path, capsys, monkeypatch):
    # safetensors reports ENOSPC as its own SafetensorError, not an OSError: it came out of main as a traceback.
    import transformers.modeling_utils
    from safetensors import SafetensorError

    run = _finished_run(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    assert export_mod.main(["recipes/wine.yaml", "--run", str(run), "--formats", "merged"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: the export to {run / 'export'} failed: Error while serializing: I/O error: No space left on " \
           "device (os error 28)" in err, err
    assert not (run / "export").exists()
