"""One tiny training run that ends with an export, shared by test_export.py and test_chat.py.

It is built once per pytest session (in the session's temporary folder) whichever of the two modules asks first:
`toolkit.run` with a 1-step GRPO run and `export.formats` set, so the run's own export hook is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "wine.yaml"
FORMATS = ["adapter", "merged", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]
OVERRIDES = [
    "training.max_steps=1",
    "training.num_generations=4",
    "training.per_device_train_batch_size=4",
    "training.max_completion_length=16",
    # A length band no 16-token sample fits (as in test_run.py): rewards differ within the group, so the one GRPO
    # step has a non-zero loss and the LoRA moves away from its zero initialization.
    "rewards.4.params={min_words: 1, max_words: 2, falloff: 30}",
    "data.max_train_questions=1",
    "eval.limit=2",
    "eval.max_new_tokens=8",
    f"export.formats=[{', '.join(FORMATS)}]",
]


def exported_run(tmp_path_factory) -> Path:
    """The run folder (with adapter/, index/, report.json and export/); fails with the run's log if it failed."""
    base = tmp_path_factory.getbasetemp()
    out, log = base / "export-run", base / "export-run.log"
    if not out.exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "toolkit.run", "recipes/wine.yaml", f"output_dir={out}", *OVERRIDES],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
        )
        log.write_text(f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert (out / "export" / "manifest.json").is_file(), log.read_text()[-4000:]
    return out
