"""Evaluation columns without a model: `generate` is replaced by canned completions, the rest is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit import evaluate
from toolkit.evaluate import compare, evaluate_columns, no_context_prompt
from toolkit.prompts import build_messages
from toolkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
GOOD = "<think>The context says Nebbiolo.</think><answer>Nebbiolo</answer>"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(ROOT / "recipes" / "wine.yaml")


def make_rows(recipe, n=3):
    rows = []
    for i in range(n):
        context = [f"Barolo {i} is a red wine from Piedmont made from Nebbiolo."]
        rows.append({
            "prompt": build_messages(recipe.prompt, "Which grape is Barolo made from?", context),
            "question": "Which grape is Barolo made from?", "answer": "Nebbiolo", "aliases": ["Spanna"],
            "source": "region-barolo", "context": context, "context_ids": [f"region-barolo:{i}:x"],
            "context_sources": ["region-barolo" if i else "grape-merlot"],  # the first question missed its document
        })
    return rows


class Seen(list):
    """The prompts `generate` got, and its `share_prefix` flag per call."""

    def __init__(self):
        super().__init__()
        self.share_prefix = []


@pytest.fixture
def canned(monkeypatch):
    """`generate` answers from a table keyed by whether the prompt's last turn carries a context."""
    seen = Seen()

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, share_prefix):
        seen.extend(prompts)
        seen.share_prefix.append(share_prefix)
        texts = [model[bool(p[-1]["content"].split("Question:")[0].strip().removeprefix("Context:").strip())]
                 for p in prompts]
        return texts, [len(t.split()) for t in texts], [False] * len(texts)

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    return seen


def test_no_context_prompt_keeps_system_and_examples(recipe):
    row = make_rows(recipe, 1)[0]
    plain = no_context_prompt(recipe, row)
    assert plain[:-1] == row["prompt"][:-1]  # same system message and worked examples
    assert "Question: Which grape is Barolo made from?" in plain[-1]["content"]
    assert "Barolo 0 is a red wine" not in plain[-1]["content"]


def test_three_columns_share_questions(recipe, canned):
    rows = make_rows(recipe)
    base_model = {True: GOOD, False: "<think>I recall.</think><answer>Merlot</answer>"}
    tuned_model = {True: GOOD, False: GOOD}
    results = evaluate_columns(recipe, base_model, None, rows, ("no_context", "base"))
    results |= evaluate_columns(recipe, tuned_model, None, rows, ("tuned",), share_prefix=False)
    assert len(canned) == 9
    assert canned.share_prefix == [True, True, False]  # on by default; a backend may turn it off (Unsloth)
    section, predictions = compare(recipe, rows, results)

    assert section["no_context"]["answer_match"] == 0.0
    assert section["base"]["answer_match"] == section["tuned"]["answer_match"] == 1.0
    assert section["base"]["retrieval_recall"] == pytest.approx(0.6667)  # 2 of 3 retrieved the gold document
    assert section["no_context"]["retrieval_recall"] is None
    assert {"answer_match", "token_f1", "context_grounding", "format", "completion_tokens", "truncated",
            "retrieval_recall", "reward_total"} <= section["base"].keys()
    assert section["eval"]["questions"] == 3 and section["eval"]["predictions"] == "eval/predictions.jsonl"
    rag = section["differences"]["base - no_context"]["answer_match"]
    assert rag["mean"] == rag["low"] == 1.0 and not rag["significant"]  # 3 of 3 won, but 3 is under MIN_QUESTIONS
    assert not section["differences"]["tuned - base"]["answer_match"]["significant"]

    assert len(predictions) == 3
    first = predictions[0]
    assert {"question", "gold", "no_context", "base", "tuned"} <= first.keys()
    assert first["no_context"]["answer"] == "Merlot" and first["tuned"]["answer"] == "Nebbiolo"
    assert first["base"]["scores"]["answer_match"] is True and first["base"]["scores"]["retrieval_recall"] is False


def test_a_reward_model_loads_once_for_all_columns(recipe, canned, caplog):
    """semantic_match loads its embedder on first use: built once per evaluation (or passed in by the run, which
    shares one set with training), not once per column."""
    from toolkit.recipe import RewardSpec

    with_model = recipe.model_copy(update={"rewards": [*recipe.rewards, RewardSpec(name="semantic_match")]})
    rows = make_rows(with_model, 2)
    model = {True: GOOD, False: GOOD}
    with caplog.at_level("INFO", logger="toolkit.rewards.model_based"):
        results = evaluate_columns(with_model, model, None, rows, ("no_context", "base"))
        rewards = with_model.build_rewards()
        results |= evaluate_columns(with_model, model, None, rows, ("tuned",), rewards=rewards)
        results |= evaluate_columns(with_model, model, None, rows, ("base",), rewards=rewards)
    assert sum("loading embedder" in r.getMessage() for r in caplog.records) == 2
    assert results["tuned"][0]["scores"]["reward/semantic_match"] == pytest.approx(1.0, abs=1e-3)


def test_unknown_column_is_refused(recipe, canned):
    with pytest.raises(ValueError, match="unknown eval column"):
        evaluate_columns(recipe, {}, None, make_rows(recipe, 1), ("rag",))


def test_cli_reports_bad_recipe_and_missing_adapter(tmp_path, capsys):
    assert evaluate.main(["recipes/wine.yaml", "eval.lmit=3"]) == 2
    assert "did you mean 'limit'" in capsys.readouterr().err
    assert evaluate.main(["recipes/wine.yaml", "--adapter", str(tmp_path), "--limit", "2"]) == 2
    assert "not a LoRA adapter folder (no adapter_config.json)\n" in capsys.readouterr().err
    # A run folder instead of its adapter/: the error says which folder was meant.
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert evaluate.main(["recipes/wine.yaml", "--adapter", str(tmp_path), "--limit", "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"(no adapter_config.json); did you mean --adapter {tmp_path / 'adapter'}?" in err


def test_cli_reports_a_failing_reward_in_one_line(tmp_path, capsys):
    # Evaluation scores every reward of the recipe, so a custom one that raises stops it: one line and status 2,
    # as in toolkit.run, naming the reward and the sample.
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def boom(completions, **kwargs):\n    raise ValueError('no score for this')\n")
    status = evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", f'rewards=[{{name: "{rewards}:boom"}}]',
                            "eval.max_new_tokens=4", "--limit", "1"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "raised ValueError: no score for this" in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "eval").exists()


def test_rewards_see_the_prompt_each_column_answered(recipe, canned, tmp_path):
    # TRL passes a reward the prompt it sampled from (`prompts`); evaluation passes the one each column's model
    # saw, so the no-context column's rewards get the prompt without context.
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def saw_context(completions, prompts, context, **kwargs):\n"
                       "    return [float(c[0] in p[-1]['content']) for p, c in zip(prompts, context)]\n")
    custom = load_recipe(ROOT / "recipes" / "wine.yaml", [f'rewards=[{{name: "{rewards}:saw_context"}}]'])
    model = {True: GOOD, False: GOOD}
    results = evaluate_columns(custom, model, None, make_rows(recipe, 2), ("no_context", "base"))
    assert [r["scores"]["reward/saw_context"] for r in results["no_context"]] == [0.0, 0.0]
    assert [r["scores"]["reward/saw_context"] for r in results["base"]] == [1.0, 1.0]


def test_a_reply_ending_on_a_configured_eos_is_not_truncated():
    # Llama-3 style: generation_config lists several eos ids, and generate stops on any of them (here 9), not only
    # on the tokenizer's eos (2). Such a reply ended by itself; its stop token is not part of its length.
    import torch
    from transformers import BatchEncoding, GenerationConfig

    class Tokenizer:
        eos_token_id, pad_token_id = 2, 0

        def apply_chat_template(self, prompts, **kwargs):
            ids = torch.tensor([[5, 6]] * len(prompts))
            return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

        def decode(self, ids, skip_special_tokens):
            return " ".join(map(str, ids))

    class Model:
        device = "cpu"
        generation_config = GenerationConfig(eos_token_id=[2, 9])

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, **kwargs):
            replies = torch.tensor([[7, 8, 9, 0], [7, 2, 0, 0], [7, 8, 7, 8]])  # eos 9, eos 2, cut at the limit
            return torch.cat([input_ids, replies], dim=1)

    texts, lengths, truncated = evaluate.generate(Model(), Tokenizer(), [[]] * 3, 4, 3, share_prefix=False)
    assert (texts, lengths, truncated) == (["7 8", "7", "7 8 7 8"], [2, 1, 4], [False, False, True])


@pytest.mark.parametrize("flag", ["--out", "--adapter"])
def test_cli_refuses_empty_flag_values(tmp_path, capsys, flag):
    # Path("") is ".": --out '' used to write the report into the current folder.
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", f"{flag}=", "--limit", "1"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must not be empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--out", "--adapter"])
def test_cli_refuses_a_file_for_a_folder_before_evaluating(tmp_path, capsys, flag):
    # --out on a file used to fail in mkdir with a traceback, after the whole evaluation had run.
    (tmp_path / "file").write_text("x")
    for value in (tmp_path / "file", tmp_path / "file" / "eval"):
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", flag, str(value), "--limit", "1"])
        assert exit_.value.code == 2
        assert f"argument {flag}: {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_expands_home_in_folder_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    from toolkit.cli import folder_arg

    assert evaluate._out_folder("~/eval") == tmp_path / "eval" and folder_arg("~") == tmp_path


def test_cli_refuses_an_out_folder_it_cannot_write_before_evaluating(tmp_path, capsys):
    # /proc takes no new folders, even from root: this used to fail with a traceback after the evaluation.
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--out", "/proc/toolkit-eval/x", "--limit", "1"])
    assert exit_.value.code == 2
    assert "argument --out: cannot make a folder in /proc (" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing evaluated, nothing written


def test_cli_refuses_outputs_in_the_way_and_a_dangling_out_link_before_evaluating(tmp_path, capsys):
    (tmp_path / "o" / "report.json").mkdir(parents=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, message in ((tmp_path / "o", f"{tmp_path / 'o' / 'report.json'} is a folder, and a file is written there"),
                         (tmp_path / "dangling", f"{tmp_path / 'dangling'} is a link to {tmp_path / 'nowhere'}, "
                                                 "which does not exist")):
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--out", str(out), "--limit", "1"])
        assert exit_.value.code == 2
        assert f"argument --out: {message}" in " ".join(capsys.readouterr().err.split())
    # Without --out: <output_dir>/evaluate, checked after the recipe loads.
    (tmp_path / "run" / "evaluate" / "report.md").mkdir(parents=True)
    assert evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path / 'run'}", "--limit", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output_dir: {tmp_path / 'run' / 'evaluate' / 'report.md'} is a folder, and a file is written there" in err
    assert not (tmp_path / "run" / "index").exists()


def test_cli_refuses_an_out_folder_inside_the_corpus_before_evaluating(tmp_path, capsys, monkeypatch):
    # Its report.md and predictions.jsonl became documents of the next index.
    import shutil

    monkeypatch.setattr(evaluate, "evaluate_recipe", lambda *a: pytest.fail("evaluated first"))

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy("data/wine/docs.jsonl", docs)
    argv = ["recipes/wine.yaml", f"data.corpus=[{docs}]", "--limit", "1"]
    assert evaluate.main([*argv, "--out", str(docs / "eval")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out: {docs / 'eval'} is inside the corpus entry {docs} (data.corpus)" in err, err
    assert evaluate.main([*argv, f"output_dir={docs / 'run'}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output_dir: {docs / 'run' / 'evaluate'} is inside the corpus entry {docs} " in err, err
    assert "pass --out DIR outside it" in err and sorted(p.name for p in docs.iterdir()) == ["docs.jsonl"]


def test_cli_never_writes_over_a_training_runs_report_or_predictions(tmp_path, capsys, monkeypatch):
    # The default used to be <output_dir>/eval, where the run keeps the predictions its report.json points to, and
    # --out <run> replaced the run's report.json (training history and tuned column gone), both without a word.
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"training": {}, "eval": {"predictions": "eval/predictions.jsonl"}}))
    (run / "eval" / "predictions.jsonl").write_text("{}\n")
    for out, message in ((run, f"{run} holds a training run's report"),
                         (run / "eval", f"{run / 'eval'} holds the predictions of the run in {run}")):
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(["recipes/wine.yaml", f"output_dir={run}", "--out", str(out), "--limit", "1"])
        assert exit_.value.code == 2
        assert f"argument --out: {message}, which this evaluation would replace" in " ".join(
            capsys.readouterr().err.split())
    assert evaluate.run_outputs(run / "evaluate") is None  # the default: a folder of its own
    # Through a link, or `.` inside the run's eval/: the run found by the real path.
    (tmp_path / "link").symlink_to(run / "eval")
    assert evaluate.run_outputs(tmp_path / "link") == (
        f"{tmp_path / 'link'} holds the predictions of the run in {run}, which this evaluation would replace")
    monkeypatch.chdir(run / "eval")
    assert evaluate.run_outputs(Path(".")).startswith(f". holds the predictions of the run in {run}")
    (tmp_path / "mine" / "report.json").parent.mkdir()
    (tmp_path / "mine" / "report.json").write_text(json.dumps({"eval": {}}))  # an earlier evaluate's: replaced
    assert evaluate.run_outputs(tmp_path / "mine") is None


def test_a_default_out_that_is_a_link_to_a_run_gets_one_hint(tmp_path, capsys):
    # <output_dir>/evaluate linked to a run: the reason carried --out's hint and the caller added its own, so the
    # line read "...; pass another --out; move it away or pass --out DIR".
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"training": {}, "eval": {"predictions": "eval/predictions.jsonl"}}))
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "evaluate").symlink_to(run)
    assert evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path / 'y'}", "--limit", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"output_dir: {tmp_path / 'y' / 'evaluate'} holds a training run's report, which this evaluation would "
            "replace; move it away or pass --out DIR") in err, err
    assert err.count("--out") == 1, err
    # --out names the same folder: its own hint, once.
    with pytest.raises(SystemExit):
        evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path / 'y'}", "--out", str(run), "--limit", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert f"argument --out: {run} holds a training run's report, which this evaluation would replace; pass another " \
           "--out" in err, err
    assert err.count("pass") == 1, err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_recipe", interrupted)
    assert evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--limit", "1"]) == 130
    captured = capsys.readouterr()
    assert "interrupted: no report written" in captured.err and "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("defect", ["config not JSON", "config a list", "weights truncated", "weights missing"])
def test_cli_reports_a_broken_adapter_before_evaluating(tmp_path, capsys, defect):
    from test_models import broken_adapter, tiny_llama

    adapter = broken_adapter(tmp_path / "adapter", tiny_llama(), defect)
    status = evaluate.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--adapter", str(adapter), "--limit", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert status == 2 and f"{adapter}: not a loadable LoRA adapter: " in err, err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "index").exists()  # failed before any work


def _standalone(monkeypatch, tmp_path, base):
    """evaluate_recipe on `base` with no index or rows; each evaluate_columns call records its labels and the
    model's logits on a fixed input (what that column's answers were generated with)."""
    from types import SimpleNamespace

    import torch

    import toolkit.index
    import toolkit.prompts

    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"model.name_or_path={base}", f"output_dir={tmp_path}"])
    monkeypatch.setattr(toolkit.index, "build_index", lambda *args, **kwargs: (None, SimpleNamespace()))
    monkeypatch.setattr(toolkit.prompts, "build_rows", lambda *args, **kwargs: [])
    calls = []

    def record(recipe, model, tokenizer, rows, labels, *args, **kwargs):
        with torch.no_grad():
            calls.append((labels, model(torch.tensor([[1, 2, 3, 4]])).logits))
        return {}

    monkeypatch.setattr(evaluate, "evaluate_columns", record)
    return recipe, SimpleNamespace(documents=[], eval=[]), calls


def test_an_adapter_that_does_not_fit_the_base_fails_before_the_base_columns(tmp_path, monkeypatch):
    # Its files read, but its rank differs from its weights: found only when peft loads it. That used to be after
    # the base columns, minutes into a CPU evaluation.
    from test_export import _tiny_model
    from test_models import broken_adapter

    from toolkit.models import ModelError

    model, _, base = _tiny_model(tmp_path, "llama")
    adapter = broken_adapter(tmp_path / "adapter", model, "rank differs")
    recipe, dataset, calls = _standalone(monkeypatch, tmp_path, base)
    with pytest.raises(ModelError, match=f"^{adapter}: not a loadable LoRA adapter: RuntimeError: .*size mismatch"):
        evaluate.evaluate_recipe(recipe, dataset, adapter, tmp_path / "eval")
    assert calls == []  # no column was evaluated
    assert not (tmp_path / "eval").exists()


def test_the_base_columns_run_without_the_adapter_loaded_before_them(tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from test_export import _tiny_model
    from transformers import AutoModelForCausalLM

    model, _, base = _tiny_model(tmp_path, "llama")
    # init_lora_weights=False: random B as well as A, so the adapter changes the logits from the start.
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    recipe, dataset, calls = _standalone(monkeypatch, tmp_path, base)
    report = evaluate.evaluate_recipe(recipe, dataset, tmp_path / "adapter", tmp_path / "eval")
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base)(torch.tensor([[1, 2, 3, 4]])).logits
    assert [labels for labels, _ in calls] == [("no_context", "base"), ("tuned",)]
    assert torch.equal(calls[0][1], plain)  # the base columns: the base model's own logits, exactly
    assert not torch.allclose(calls[1][1], plain)  # the tuned column: the adapter's
    assert report["adapter"] == str(tmp_path / "adapter") and (tmp_path / "eval" / "report.json").is_file()


def test_an_adapter_evaluated_with_another_prompt_than_its_run_is_warned_about(tmp_path, monkeypatch, caplog):
    # The adapter's run trained with prompt.open_think; the recipe alone would score it asked otherwise.
    from test_export import _finished_run, record_prompt

    from toolkit.models import ModelError

    run = _finished_run(tmp_path)
    record_prompt(run, open_think=True)

    def stop(*args, **kwargs):
        raise ModelError("stopped before the columns")

    monkeypatch.setattr(evaluate, "evaluate_recipe", stop)
    assert evaluate.main(["recipes/wine.yaml", "--adapter", str(run / "adapter"), "--out", str(tmp_path / "e")]) == 2
    assert ("asking the model unlike its training: prompt.open_think is true in the run (report.json) but false "
            "here: evaluate with the overrides the run trained with (prompt.open_think=true)") in caplog.text
    caplog.clear()
    assert evaluate.main(["recipes/wine.yaml", "--adapter", str(run / "adapter"), "--out", str(tmp_path / "e"),
                          "prompt.open_think=true"]) == 2
    assert "unlike its training" not in caplog.text


@pytest.mark.parametrize("where", ["export/adapter", "trainer/checkpoint-3"])
def test_an_exported_adapter_or_a_checkpoint_is_checked_against_its_run(tmp_path, monkeypatch, caplog, where):
    # export/adapter (what users ship) and a checkpoint live one folder deeper than adapter/: same run, same check.
    import shutil

    from test_export import _finished_run, record_prompt

    from toolkit.models import ModelError

    run = _finished_run(tmp_path)
    record_prompt(run, open_think=True)
    shutil.copytree(run / "adapter", run / where)
    monkeypatch.setattr(evaluate, "evaluate_recipe", lambda *a, **k: (_ for _ in ()).throw(ModelError("stop")))
    assert evaluate.main(["recipes/wine.yaml", "--adapter", str(run / where), "--out", str(tmp_path / "e")]) == 2
    assert "asking the model unlike its training: prompt.open_think is true in the run" in caplog.text
