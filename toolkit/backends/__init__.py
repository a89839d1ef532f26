"""Training backends: how the model is loaded, wrapped with LoRA, trained by TRL's GRPOTrainer and saved.

Two backends share one small interface (`Backend`):

- `hf`: transformers + peft; fp32 on a CPU, 4-bit through bitsandbytes on CUDA when the recipe asks
  (`model.load_in_4bit`). The CPU path of the toolkit.
- `unsloth`: Unsloth's `FastLanguageModel` (fused 4-bit LoRA kernels, its own gradient checkpointing, vLLM
  generation when vLLM is installed) with the same TRL `GRPOTrainer`, which Unsloth patches as it is imported.

`model.backend: auto` (the default) picks `unsloth` when a CUDA GPU is there and Unsloth imports, else `hf`, and
logs which and why. Unsloth, bitsandbytes and xformers are imported only on their paths, never when `toolkit` is:
this module imports nothing heavy at the top.

Import order matters on the Unsloth path: Unsloth patches transformers, peft and TRL when it is imported, so it must
come first. `select_backend` is therefore the first thing a run does, and `import_trl` (used by the recipe check of
`training.trl`) imports Unsloth before TRL when the run will use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.models import ModelError

if TYPE_CHECKING:
    from toolkit.recipe import Recipe

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "unsloth")
CUDA_EXTRA = "pip install 'toolkit[cuda]'"


class BackendError(ModelError):
    """A backend that cannot be used here; the message says why and what to change."""


class Backend(ABC):
    """Load the model, build the GRPO trainer, save the adapter: everything that differs between backends."""

    name: str
    # Evaluation generates with toolkit.generation's shared prompt prefix (a KV cache filled before `generate`).
    shares_prompt_prefill = True

    def __init__(self, reason: str = ""):
        self.reason = reason  # why this backend was chosen, for the log and the report

    @abstractmethod
    def load(self, recipe: Recipe, model_path: str):
        """Return `(model, tokenizer)`: the base model, ready for evaluation, and a left-padding tokenizer."""

    @abstractmethod
    def build_trainer(self, recipe: Recipe, model, tokenizer, **trainer_kwargs):
        """Wrap `model` with the recipe's LoRA (or hand TRL a LoRA config) and return a `GRPOTrainer`.

        `trainer_kwargs` are GRPOTrainer arguments the backend does not own: `args`, `reward_funcs`,
        `train_dataset`, `callbacks`, ..."""

    def grpo_overrides(self, recipe: Recipe) -> dict[str, Any]:
        """GRPOConfig values this backend needs; applied after the recipe's mapped fields, before `training.trl`."""
        return {}

    def context_length(self, recipe: Recipe, model) -> int | None:
        """The most tokens (prompt and reply) the loaded model takes; None when its config does not say."""
        return getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def for_inference(self, model, tokenizer):
        """The model to generate evaluation answers with (the base model before training, the tuned one after)."""
        return model

    def save_adapter(self, model, path: Path) -> None:
        """Write the LoRA adapter (not the base weights) into `path`."""
        model.save_pretrained(path)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _import_unsloth():
    """Import Unsloth; any failure (missing package, CUDA/driver mismatch, ...) is returned, not raised."""
    try:
        return importlib.import_module("unsloth"), None
    except Exception as err:  # noqa: BLE001 - Unsloth fails in many ways (ImportError, RuntimeError, ...)
        first_line = next(iter(str(err).strip().splitlines()), "")
        return None, f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


def select_backend(name: str = "auto") -> Backend:
    """The backend for `model.backend`; `auto` picks unsloth on a CUDA GPU where it imports, else hf."""
    from toolkit.backends.hf import HFBackend

    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "hf":
        backend: Backend = HFBackend("model.backend is hf")
    elif name == "unsloth":
        if not cuda_available():
            raise BackendError(
                "model.backend: unsloth needs a CUDA GPU and torch.cuda.is_available() is False; "
                "use model.backend=hf (or auto) on this machine"
            )
        module, error = _import_unsloth()
        if module is None:
            raise BackendError(f"model.backend: unsloth does not import ({error}); install it with {CUDA_EXTRA}")
        from toolkit.backends.unsloth import UnslothBackend

        backend = UnslothBackend(f"model.backend is unsloth (unsloth {_version(module)})")
    elif not cuda_available():
        backend = HFBackend("auto: no CUDA GPU (torch.cuda.is_available() is False), so transformers + peft")
    else:
        module, error = _import_unsloth()
        if module is None:
            backend = HFBackend(
                f"auto: CUDA is available but unsloth does not import ({error}), so transformers + peft; "
                f"for the faster path: {CUDA_EXTRA}"
            )
        else:
            from toolkit.backends.unsloth import UnslothBackend

            backend = UnslothBackend(f"auto: CUDA GPU {_gpu_name()} and unsloth {_version(module)} imports")
    logger.info("backend %s — %s", backend.name, backend.reason)
    return backend


def import_trl(backend: str = "auto"):
    """Import and return `trl`, after Unsloth when this run would use it (Unsloth must patch TRL first).

    Used when the recipe is checked, before `select_backend`; an Unsloth that fails to import is left for
    `select_backend` to report."""
    import sys

    if "trl" not in sys.modules and backend in ("auto", "unsloth") and importlib.util.find_spec("unsloth"):
        if cuda_available():
            _import_unsloth()
    return importlib.import_module("trl")


def _version(module) -> str:
    return str(getattr(module, "__version__", "?"))


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())
