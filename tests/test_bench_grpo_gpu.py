"""benchmarks/bench_grpo_gpu.py on a machine without CUDA: it refuses before measuring anything, and a worker that
fails leaves its whole log in a file (what the GPU runs rely on when a run is cut short)."""

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from script_modules import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_grpo_gpu.py"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA GPU")


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


def test_without_cuda_exits_2_and_says_why(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and done.stdout == ""


def test_failed_worker_keeps_its_log_and_reports_its_tail(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--log-dir", str(tmp_path / "logs")])
    args = Namespace(log_dir=str(tmp_path / "logs"))
    # Without CUDA the unsloth worker stops at backend selection, after its interpreter has started for real.
    result = bench.run_worker(args, "unsloth", tmp_path / "no-model", tmp_path / "rows.json", tmp_path)
    log = (tmp_path / "logs" / "unsloth.log").read_text()
    assert "unsloth needs a CUDA GPU" in log
    assert result["backend"] == "unsloth" and result["error"].startswith("exit 1: ")
    assert "unsloth needs a CUDA GPU" in result["error"]
    assert not (tmp_path / "unsloth.json").exists()


def test_the_hf_arm_keeps_the_recipes_trl_settings(bench):
    # Both arms must train the same recipe: the hf arm only adds gradient checkpointing, which Unsloth does itself.
    from toolkit.recipe import load_recipe

    r1 = load_recipe(ROOT / "recipes" / "wine-r1.yaml", bench.backend_overrides("hf"))
    assert r1.model.backend == "hf"
    assert r1.training.trl == {"optim": "adamw_8bit", "max_grad_norm": 0.1, "gradient_checkpointing": True}
    wine = load_recipe(ROOT / "recipes" / "wine.yaml", bench.backend_overrides("hf"))
    assert wine.training.trl == {"gradient_checkpointing": True}
    assert bench.backend_overrides("unsloth") == ["model.backend=unsloth"]
