"""The `unsloth` backend: Unsloth's FastLanguageModel with TRL's GRPOTrainer, on a CUDA GPU.

Written for the pinned `unsloth==2026.10.9` (the `cuda` extra). Importing Unsloth patches TRL itself: since
early 2025 `unsloth.models.llama` runs `PatchFastRL` at import, which swaps `trl.GRPOTrainer`/`trl.GRPOConfig`
for `UnslothGRPOTrainer`/`UnslothGRPOConfig` (Unsloth's generation and chunked log-prob code, its gradient
checkpointing, vLLM when the model has an engine). So there is no explicit `PatchFastRL` call here, only two
rules: Unsloth is imported before TRL and transformers (`select_backend` does that at the start of a run), and TRL
is imported lazily, inside the functions below, so the patched classes are the ones found.

The patched trainer takes the LoRA model ready-made (no `peft_config`), decides bf16/fp16 from the model's dtype
when both are off, and switches the model between its training and inference modes around generation.
"""

from __future__ import annotations

import importlib
import logging

from toolkit.backends import Backend
from toolkit.models import ready_tokenizer

logger = logging.getLogger(__name__)

# Unsloth's default LoRA targets; `all-linear` means these for the decoder architectures it supports.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Share of GPU memory vLLM may claim when fast_inference is on (Unsloth's notebooks use 0.5-0.9).
VLLM_GPU_MEMORY_UTILIZATION = 0.6


def vllm_importable() -> bool:
    try:
        importlib.import_module("vllm")
    except Exception as err:  # noqa: BLE001 - a broken vLLM (CUDA mismatch, ...) is as good as none here
        if not (isinstance(err, ModuleNotFoundError) and err.name == "vllm"):  # installed, but broken: say so
            logger.warning("vLLM does not import (%s: %s); generating without it", type(err).__name__, err)
        return False
    return True


class UnslothBackend(Backend):
    name = "unsloth"

    def __init__(self, reason: str = "", fast_inference: bool | None = None):
        super().__init__(reason)
        # None: use vLLM generation exactly when vLLM imports. The GPU benchmark turns it off: vLLM claims a
        # fixed share of the GPU up front, so peak memory would no longer measure what the run needs.
        self.fast_inference = vllm_importable() if fast_inference is None else fast_inference

    def load(self, recipe, model_path: str):
        from unsloth import FastLanguageModel

        settings = recipe.model
        extra = {}
        if self.fast_inference:
            extra = {"max_lora_rank": recipe.training.lora.r, "gpu_memory_utilization": VLLM_GPU_MEMORY_UTILIZATION}
        logger.info(
            "unsloth: loading %s (4-bit %s, max_seq_length %d, vLLM generation %s); dtype chosen by Unsloth "
            "(bf16 where the GPU has it, else fp16), model.dtype is not used",
            model_path, settings.load_in_4bit, settings.max_seq_length, "on" if self.fast_inference else "off",
        )
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_path,
            max_seq_length=settings.max_seq_length,
            load_in_4bit=settings.load_in_4bit,
            fast_inference=self.fast_inference,
            dtype=None,
            **extra,
        )
        ready_tokenizer(tokenizer, model_path)  # as the hf backend's load_model does
        return model, tokenizer

    def context_length(self, recipe, model) -> int | None:
        # Unsloth sizes its caches for model.max_seq_length, which may be shorter than the model's own context.
        own = super().context_length(recipe, model)
        return min(own, recipe.model.max_seq_length) if own else recipe.model.max_seq_length

    def grpo_overrides(self, recipe) -> dict:
        return {
            # Both off: the patched trainer then picks bf16 or fp16 to match the weights Unsloth loaded (setting
            # one that disagrees with them is an error there).
            "bf16": False,
            "fp16": False,
            # The patched trainer re-applies args.gradient_checkpointing to the model when training starts; off
            # would undo the Unsloth (offloaded) checkpointing get_peft_model set up.
            "gradient_checkpointing": True,
            "use_vllm": self.fast_inference,
        }

    def build_trainer(self, recipe, model, tokenizer, **trainer_kwargs):
        from trl import GRPOTrainer
        from unsloth import FastLanguageModel

        lora = recipe.training.lora
        targets = ALL_LINEAR if lora.target_modules == "all-linear" else list(lora.target_modules)
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            target_modules=targets,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            layers_to_transform=lora.layers_to_transform,
            use_gradient_checkpointing="unsloth",
            random_state=recipe.training.seed,
        )
        if not GRPOTrainer.__name__.startswith("Unsloth"):
            logger.warning(
                "trl.GRPOTrainer is not Unsloth's patched trainer (was trl imported before unsloth?); training "
                "runs, but without Unsloth's GRPO optimizations"
            )
        return GRPOTrainer(model=model, processing_class=tokenizer, **trainer_kwargs)

    # Unsloth's fast inference keeps a KV cache of its own; a prefilled one handed to its generate has not been
    # tried on a GPU, so its evaluation generates plainly.
    shares_prompt_prefill = False

    def for_inference(self, model, tokenizer):
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
        # The patched trainer pads on the right for training; batched generation needs the left.
        tokenizer.padding_side = "left"
        return model
