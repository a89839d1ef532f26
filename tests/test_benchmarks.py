"""Every script in benchmarks/: `--help` works (a stale import fails here, not on the day someone runs it), and a
user's mistake (a mistyped recipe key, a missing recipe or run folder, a report of the wrong kind) is the toolkit's
one-line `error: ...` and exit status 2, before any work, not a traceback. Nothing here trains or loads a model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def run_script(name: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The `error: ...` line of a run that refused its input: exit 2, no traceback, nothing on stdout."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr[-3000:]
    return last


def test_every_benchmark_script_is_covered():
    assert {s.name for s in SCRIPTS} >= {"bench_export.py", "bench_generation.py", "bench_grpo_gpu.py",
                                         "bench_index.py", "bench_overhead.py", "bench_rewards.py",
                                         "learning_curve.py", "seed_sweep.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_help_prints_usage_and_the_whole_first_paragraph(script, tmp_path):
    # Imports every module the script imports at load (a name moved to another module fails here), and --help
    # stops there: it never starts the benchmark.
    done = run_script(script.name, "--help", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("usage: ")
    # The description is the docstring's first paragraph whole, not its first line cut mid-sentence (argparse
    # re-wraps it, so whitespace is not compared).
    doc = load_script(script).__doc__
    paragraph = "".join(doc.strip().split("\n\n")[0].split())
    assert paragraph in "".join(done.stdout.split())


@pytest.mark.parametrize(("script", "args", "expected"), [
    ("learning_curve.py", ["training.lerning_rate=1"], "training.lerning_rate: unknown field"),
    ("bench_overhead.py", ["training.lerning_rate=1"], "training.lerning_rate: unknown field"),
    ("bench_export.py", ["training.lerning_rate=1"], "training.lerning_rate: unknown field"),
    ("bench_generation.py", ["--recipe", "/nonexist.yaml"], "/nonexist.yaml: recipe file not found"),
    ("bench_export.py", ["--run", "/nonexist"], "/nonexist: no such folder"),
    ("seed_sweep.py", ["--seeds", "1", "--variant", "training.lerning_rate=1"], "training.lerning_rate: unknown field"),
    # Both runs of seed 1 would share one folder and one per-seed entry.
    ("seed_sweep.py", ["--seeds", "1", "1"], "--seeds: seed 1 given twice"),
    # Refused before the model loads (0 rounds failed after it with KeyError: 'plain').
    ("bench_generation.py", ["--rounds", "0"], "--rounds must be at least 1, got 0"),
    ("bench_generation.py", ["--groups", "-1"], "--groups must be at least 1, got -1"),
    # Checked before any GPU work (and before the CUDA check): --steps 0 measured nothing after a whole run, and
    # --warmup -1 measured only the last step.
    ("bench_grpo_gpu.py", ["--steps", "0"], "--steps must be at least 1, got 0"),
    ("bench_grpo_gpu.py", ["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    # --from-report reads a finished run: what would shape a new one was accepted and did nothing.
    ("learning_curve.py", ["--from-report", "report.json", "--recipe", "r.yaml", "training.max_steps=1"],
     "--from-report reads a finished run; --recipe, --output-dir, training.max_steps=1 would do nothing with it"),
])
def test_a_users_mistake_is_one_line_and_exit_2(script, args, expected, tmp_path):
    out = tmp_path / "out"
    extra = ["--output-dir", str(out)] if script in ("learning_curve.py", "seed_sweep.py") else []
    last = one_line_error(run_script(script, *args, *extra, cwd=tmp_path))
    assert expected in last
    assert not out.exists()  # refused before anything was written


EVALUATE_REPORT = {  # what `python -m toolkit.evaluate --adapter ...` writes: the three columns, no training
    "recipe": {"model": {"name_or_path": "packaged:smollm2-135m-instruct"}, "output_dir": "runs/wine"},
    "model_path": "/models/smollm2", "adapter": "runs/wine/adapter", "index": {"documents": 3},
    "eval": {"questions": 4, "columns": {}, "predictions": "predictions.jsonl"},
    "no_context": {"answer_match": 0.0, "format": 0.5}, "base": {"answer_match": 0.25, "format": 0.5},
    "tuned": {"answer_match": 0.5, "format": 1.0}, "intervals": {}, "differences": {"tuned - base": {}},
}


@pytest.mark.parametrize("drop", [(), ("tuned", "intervals")], ids=["with-adapter", "without-adapter"])
def test_learning_curve_refuses_an_evaluate_report_in_one_line(drop, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({k: v for k, v in EVALUATE_REPORT.items() if k not in drop}))
    last = one_line_error(run_script("learning_curve.py", "--from-report", str(report), cwd=tmp_path))
    assert f"{report}: not a training run's report (no training section)" in last


def test_learning_curve_refuses_a_report_with_empty_sections(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({k: {} for k in ("training", "base", "tuned", "no_context", "differences", "eval")}))
    last = one_line_error(run_script("learning_curve.py", "--from-report", str(report), cwd=tmp_path))
    assert f"{report}: not a complete training run's report (KeyError: " in last


def test_learning_curve_refuses_a_report_that_is_not_an_object(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("[1, 2]")
    last = one_line_error(run_script("learning_curve.py", "--from-report", str(report), cwd=tmp_path))
    assert f"{report}: not a run report" in last


def test_bench_export_reports_a_failed_training_run_by_its_own_error_line():
    # The 1-step run is a child process: when it fails, its own `error:` line is what the user needs, not a
    # CalledProcessError with its whole command line.
    bench = load_script(BENCHMARKS / "bench_export.py")
    child = [sys.executable, "-c", "import sys; print('loading...', file=sys.stderr); "
             "print('error: data.train: file not found', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(bench.ChildFailed, match=r"^toolkit\.run .*: data\.train: file not found$"):
        bench.run_child(child, "toolkit.run (the 1-step run to export)")
    crash = [sys.executable, "-c", "import sys; print('Traceback ...', file=sys.stderr); "
             "print('ZeroDivisionError: division by zero', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(bench.ChildFailed, match=r"exit 1.*ZeroDivisionError: division by zero$"):
        bench.run_child(crash, "toolkit.run (the 1-step run to export)")


def test_bench_rewards_clears_every_reward_cache_before_a_timed_pass():
    # "The row caches are cleared before each timed pass": the question and example token caches were left warm,
    # so every pass after the first timed no_example_copy and exclude_question with their lookups already done.
    import random

    from toolkit.rewards import builtin, text

    bench = load_script(BENCHMARKS / "bench_rewards.py")
    rows = bench.make_rows(random.Random(0))[:64]
    completions = [[{"role": "assistant", "content": r["text"]}] for r in rows]
    columns = {key: [r[key] for r in rows] for key in ("question", "answer", "aliases", "context")}
    columns |= {"examples": [[bench.EXAMPLE]] * len(rows), "prompts": [[{"role": "user", "content": "."}]] * len(rows),
                "completion_ids": [list(range(min(len(r["text"]) // 4, 64))) for r in rows]}
    for name, (reward, params) in bench.VARIANTS.items():
        bench.build_reward(reward, params, name)(completions, **columns)
    caches = {name: fn for module in (builtin, text) for name, fn in vars(module).items() if hasattr(fn, "cache_info")}
    assert {"_tokens_of", "_question_tokens", "_context_forms", "gold_forms"} <= caches.keys()
    assert all(fn.cache_info().currsize for fn in caches.values())  # every one was used
    bench._clear_caches()
    assert {name: fn.cache_info().currsize for name, fn in caches.items()} == dict.fromkeys(caches, 0)
