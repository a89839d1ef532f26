"""End to end: `python -m toolkit.run recipes/wine.yaml` with tiny settings, offline, on the real packaged model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Loaded by Python at start-up from PYTHONPATH: every connection or name lookup that leaves this machine is
# recorded and refused, so a run that reached for a hub (or telemetry) is caught even if the caller swallowed
# the error.
NETWORK_GUARD = textwrap.dedent(
    """
    import os, socket

    _LOG = os.environ["TOOLKIT_NETWORK_LOG"]
    _LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}
    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def _refuse(what):
        with open(_LOG, "a") as f:
            f.write(repr(what) + "\\n")
        raise OSError(f"network access refused in tests: {what!r}")

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in _LOCAL:
            _refuse(address)
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOCAL and host is not None:
            _refuse(host)
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo
    open(_LOG + ".guarded", "w").close()  # the test checks the guard was installed, not only that it logged nothing
    """
)

TINY = [
    "training.max_steps=2",
    "training.num_generations=4",
    "training.per_device_train_batch_size=4",
    "training.max_completion_length=16",
    # A length band no 16-token sample fits, so rewards differ within every group (word counts vary) and the
    # GRPO loss cannot be zero by chance: the test below relies on the weights moving.
    "rewards.4.params={min_words: 1, max_words: 2, falloff: 30}",
    "data.max_train_questions=4",
    "eval.limit=4",
    "eval.max_new_tokens=16",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    guard = tmp / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = tmp / "network.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]),
        "TOOLKIT_NETWORK_LOG": str(log),
    }
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={out}", *TINY],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    return proc, out, log


@pytest.mark.slow
def test_run_succeeds_offline(tiny_run):
    proc, out, log = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(f"{log}.guarded").exists(), "the network guard (sitecustomize) was not loaded"
    assert not log.exists(), f"the run tried to reach the network: {log.read_text()}"
    assert "answer_match" in proc.stdout and "tuned" in proc.stdout  # the before/after table is printed


@pytest.mark.slow
def test_report_has_all_columns(tiny_run):
    _, out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    metrics = ("answer_match", "token_f1", "context_grounding", "format", "reward_total", "reward/answer_match")
    for column in ("no_context", "base", "tuned"):
        for metric in metrics:
            assert 0.0 <= report[column][metric] <= 1.5, (column, metric)
            interval = report["intervals"][column][metric]
            assert interval["low"] <= report[column][metric] <= interval["high"], (column, metric)
        assert report[column]["completion_tokens"] <= 16
    assert report["no_context"]["retrieval_recall"] is None
    assert 0.0 <= report["base"]["retrieval_recall"] == report["tuned"]["retrieval_recall"] <= 1.0
    for key in ("tuned - base", "base - no_context"):
        difference = report["differences"][key]["answer_match"]
        assert difference["low"] <= difference["mean"] <= difference["high"] and difference["questions"] == 4
    assert report["training"]["steps"] == 2
    assert report["training"]["final_log"]["reward"] is not None
    assert report["eval"]["questions"] == 4
    assert report["recipe"]["training"]["max_steps"] == 2  # the resolved recipe, overrides applied
    markdown = (out / "report.md").read_text()
    assert "| answer_match |" in markdown and "| metric | no context | base + RAG | tuned + RAG |" in markdown
    predictions = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and {"no_context", "base", "tuned", "gold", "question"} <= predictions[0].keys()
    assert {"completion", "answer", "scores"} <= predictions[0]["tuned"].keys()
    # Training curves: the numbers in report.json, the PNGs next to it, embedded in report.md.
    assert report["training"]["curves"]["step"] == [1, 2]
    assert "plots/reward.png" in report["training"]["plots"]
    for path in report["training"]["plots"]:
        assert (out / path).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and f"]({path})" in markdown
    assert isinstance(report["warnings"], list)
    # Written to temporary names, then renamed: nothing half-written or left behind.
    assert not [p.name for p in out.rglob(".*")]


@pytest.mark.slow
def test_adapter_loads_and_was_trained(tiny_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(report["model_path"])
    model = PeftModel.from_pretrained(base, out / "adapter")
    lora_b = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert lora_b, "no LoRA weights in the adapter"
    # peft initializes every lora_B to zero; after two GRPO steps with a non-zero loss they must have moved.
    moved = [name for name, p in lora_b.items() if torch.count_nonzero(p) > 0]
    assert moved, "LoRA weights are still at their initial values"


@pytest.mark.slow
def test_learning_curve_reads_the_same_numbers_from_the_report(tiny_run):
    # benchmarks/learning_curve.py --from-report: issue 9's JSON line, from the run's own report.json.
    _, out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    script = ROOT / "benchmarks" / "learning_curve.py"
    done = subprocess.run([sys.executable, str(script), "--from-report", str(out / "report.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout)
    assert (line["answer_match_before"], line["answer_match_after"]) == (
        report["base"]["answer_match"], report["tuned"]["answer_match"])
    before = report["base"]["answer_match"]
    assert line["answer_match_ratio"] == (round(line["answer_match_after"] / before, 3) if before else None)
    assert line["steps"] == 2 and line["questions"] == 4
    missing = subprocess.run([sys.executable, str(script), "--from-report", str(out / "nope.json")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"--from-report {out / 'nope.json'}: No such file or directory" in missing.stderr


def test_export_that_does_not_reproduce_the_model_exits_non_zero(tmp_path, monkeypatch, capsys):
    """The run's export hook (export.formats): a GGUF that fails verification is a one-line error and status 2,
    as `python -m toolkit.export` gives, not a successful run. The export itself is faked here; test_export.py
    runs the real one and its verification."""
    from toolkit import export as export_mod
    from toolkit import run as run_mod

    manifests = iter([{"ok": False, "exact_format": "gguf-f32", "formats": ["gguf-f32"]},
                      {"ok": True, "exact_format": "gguf-f32", "formats": ["gguf-f32"]}])
    monkeypatch.setattr(export_mod, "export", lambda recipe: next(manifests))
    monkeypatch.setattr(run_mod, "run", lambda recipe, console, resume=False: run_mod.export_run(recipe, console))
    argv = ["recipes/wine.yaml", f"output_dir={tmp_path}", "export.formats=[gguf-f32]"]
    assert run_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert f"gguf-f32 does not reproduce the merged model's greedy tokens (see {tmp_path}/export/manifest.json)" in err
    assert run_mod.main(argv) == 0
    assert "gguf-f32 (verified)" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("training.lora.target_modules=[q_proj, nope_proj]",
     "training.lora.target_modules: no 'nope_proj' module in the model (its linear layers: down_proj, gate_proj, "),
    ("training.lora.layers_to_transform=[29, 30]",
     "training.lora.layers_to_transform: [30] not layers of the model (it has 30: 0-29)"),
    pytest.param("training.trl={optim: adamw_8bit}",
                 "training.trl.optim: adamw_8bit: You need to install `bitsandbytes`",
                 marks=pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None,
                                          reason="bitsandbytes is installed: adamw_8bit resolves")),
])
def test_lora_targets_are_checked_before_the_base_evaluation(tmp_path, monkeypatch, capsys, override, message):
    """peft would find these only when it wraps the model, after the base columns (a minute of a CPU run); and
    transformers an optimizer whose package is missing only when training starts."""
    from toolkit import evaluate
    from toolkit import run as run_mod

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking the LoRA targets")

    monkeypatch.setattr(evaluate, "evaluate_columns", never)
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}", override]) == 2
    assert message in capsys.readouterr().err


def test_a_new_run_stopped_in_training_leaves_none_of_the_earlier_runs_outputs(tmp_path, monkeypatch, capsys):
    # They stayed: chat, evaluate and export then took the earlier run's adapter for the new run's.
    from toolkit import evaluate, train
    from toolkit import run as run_mod

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "eval").mkdir()
    for name in ("report.json", "report.md", "eval/predictions.jsonl"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "export").mkdir()  # toolkit.export's: kept
    monkeypatch.setattr(evaluate, "evaluate_columns", lambda *args, **kwargs: {})

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", stopped)
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "eval.limit=2"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "export", "index", "trainer"]
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()


def test_a_reward_model_that_cannot_load_fails_before_the_policy_model(tmp_path, monkeypatch, capsys):
    # It loaded on its first call, after the policy model had loaded and answered the no-context column.
    from toolkit import models
    from toolkit import run as run_mod

    def never(*args, **kwargs):
        raise AssertionError("the policy model was resolved before the reward model loaded")

    monkeypatch.setattr(models, "resolve_model", never)
    override = "rewards=[{name: semantic_match, params: {device: gpu}}]"
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert "reward 'semantic_match': embedder " in err and "on device 'gpu': RuntimeError: " in err, err


def test_too_few_training_questions_for_a_step_fail_before_the_model_loads(tmp_path, monkeypatch, capsys):
    # TRL drops an incomplete generation batch: the run trained 0 steps and reported the base model as tuned.
    from toolkit import models
    from toolkit import run as run_mod

    def never(*args, **kwargs):
        raise AssertionError("the policy model was resolved")

    monkeypatch.setattr(models, "resolve_model", never)
    overrides = ["data.max_train_questions=1", "training.per_device_train_batch_size=8"]
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}", *overrides]) == 2
    err = capsys.readouterr().err
    assert "training: 1 training question, but each generation batch samples 2 " in err, err


@pytest.mark.parametrize("name, kind, message", [
    ("report.json", "folder", "report.json is a folder, and a file is written there"),
    ("adapter", "file", "adapter is a file, and a folder is written there"),
    ("eval", "file", "eval is a file, and a folder is written there"),
    ("eval/predictions.jsonl", "folder", "predictions.jsonl is a folder, and a file is written there"),
    ("adapter", "link", "adapter is a link, and a folder replaces it whole; link the output folder instead"),
])
def test_an_output_in_the_way_is_refused_before_any_work(tmp_path, capsys, name, kind, message):
    # These failed when written, after training: a traceback with the adapter and plots already written, and a
    # user's file named `adapter` left renamed to `.adapter.old`.
    from toolkit import run as run_mod

    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":  # the link was replaced by a folder after training, with a traceback left to clean up
        (tmp_path / name).symlink_to(tmp_path.parent)
    else:
        (tmp_path / name).mkdir() if kind == "folder" else (tmp_path / name).write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output_dir: {tmp_path / name} " in err and message in err, err
    assert "move it away or set another output_dir" in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # not even the index


@pytest.mark.parametrize("corpus", ["docs", "docs/**/*.*"])
def test_an_output_dir_inside_the_corpus_is_refused_before_any_work(tmp_path, capsys, monkeypatch, corpus):
    # The run wrote report.md, eval/predictions.jsonl and adapter/README.md among the documents: the next run,
    # evaluate or chat indexed the report as a document, or failed on the predictions' missing 'text'.
    import shutil

    from toolkit import run as run_mod

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "data" / "wine" / "docs.jsonl", docs)
    out = docs / "run"
    monkeypatch.setattr("toolkit.prompts.build_splits", lambda recipe: pytest.fail("loaded data first"))
    assert run_mod.main(["recipes/wine.yaml", f"output_dir={out}", f"data.corpus=[{tmp_path / corpus}]"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output_dir: {out} is inside the corpus entry {tmp_path / corpus} (data.corpus), which would read the " \
           "run's report.md and eval/predictions.jsonl as documents; set an output_dir outside it" in err, err
    assert not out.exists()


@pytest.mark.parametrize("rate, what", [("1e308", "of the adapter's"), ("1e30", "the adapted model's logits are")])
def test_a_diverged_run_fails_and_saves_no_adapter(tmp_path, capsys, rate, what):
    """learning_rate 1e308 turns the LoRA weights into NaN/inf in one step, 1e30 into finite weights whose logits
    are NaN; those runs used to exit 0 with an adapter whose every answer was empty."""
    from toolkit import run as run_mod

    tiny = [o for o in TINY if not o.startswith("training.max_steps")]
    argv = ["recipes/wine.yaml", f"output_dir={tmp_path}", *tiny, "training.max_steps=1", "eval.limit=2",
            f"training.learning_rate={rate}"]
    assert run_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "training diverged: " in err and what in err and "NaN or infinite after step 1; nothing saved" in err
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "report.json").exists()


def test_earlier_outputs_go_whole_or_not_at_all_and_links_stay(tmp_path, monkeypatch, caplog):
    # An adapter/ whose removal failed midway kept adapter_config.json without its weights (an adapter to chat,
    # evaluate and export); a linked plots/ was unlinked, leaving the old PNGs where it pointed; the log line was
    # logged as __main__'s under python -m, which the toolkit's logging never showed.
    from pathlib import Path

    from toolkit.recipe import RecipeError
    from toolkit.run import logger, remove_earlier_outputs

    assert logger.name == "toolkit.run"
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / "adapter" / name).write_text("{}")
    plots = tmp_path / "plots-elsewhere"
    plots.mkdir()
    (plots / "reward.png").write_bytes(b"png")
    (plots / "mine.txt").write_text("kept")
    (run / "plots").symlink_to(plots)
    real_rename = Path.rename

    def refused(self, target):
        if self.name == "adapter":
            raise PermissionError(1, "Operation not permitted")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refused)
    with pytest.raises(RecipeError) as err:
        remove_earlier_outputs(run)
    assert str(err.value) == (f"output_dir: cannot remove the earlier run's {run / 'adapter'} (Operation not "
                              "permitted); move it away or set another output_dir")
    assert sorted(p.name for p in (run / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    monkeypatch.setattr(Path, "rename", real_rename)
    with caplog.at_level("INFO", logger="toolkit.run"):
        remove_earlier_outputs(run)
    assert not (run / "adapter").exists() and not list(run.glob(".adapter*"))
    assert (run / "plots").is_symlink() and sorted(p.name for p in plots.iterdir()) == ["mine.txt"]
    assert f"removed the earlier run's adapter/, plots/ from {run}" in caplog.text


def test_a_full_disk_while_saving_the_adapter_is_one_line_and_keeps_the_earlier_one(tmp_path):
    # peft writes the adapter with safetensors, whose ENOSPC is a SafetensorError: it came out of toolkit.run as a
    # traceback, after the whole training.
    from types import SimpleNamespace

    from safetensors import SafetensorError

    from toolkit.recipe import RecipeError
    from toolkit.run import save_adapter

    def full(model, path):
        (path / "adapter_config.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"earlier": true}')
    with pytest.raises(RecipeError, match=f"^output_dir: cannot write the adapter {tmp_path / 'adapter'}: Error "
                                          r"while serializing: I/O error: No space left on device \(os error 28\)$"):
        save_adapter(tmp_path / "adapter", SimpleNamespace(save_adapter=full), None)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == '{"earlier": true}'
