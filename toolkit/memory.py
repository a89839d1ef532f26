"""GPU memory preflight: estimate what a recipe needs on the GPU and refuse, with the numbers, when it cannot fit.

A GRPO step has two phases that do not overlap: sampling the group of completions (the KV cache grows with
sequences × length) and the loss + backward over them (activations and the vocabulary-wide logits). Both sit on
top of what stays resident all run: the base weights and the LoRA adapter with its gradients and Adam states. The
estimate is therefore

    weights + LoRA (weights, grads, Adam) + max(generation KV cache, backward activations + logits) + margin

`estimate_memory` is a pure function of a transformers config, the recipe and the longest prompt (testable on a
CPU with any "GPU size"); `preflight` reads those on a CUDA machine before the model loads and compares the
estimate with `torch.cuda.mem_get_info()`. It is an estimate, so it errs on the large side; set
TOOLKIT_SKIP_MEMORY_CHECK=1 to skip the check when you know better.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from toolkit.recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)

GIB = 1024**3
SKIP_ENV = "TOOLKIT_SKIP_MEMORY_CHECK"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 packs two weights per byte; with double quantization its block scales add ~0.13 bit per weight.
NF4_BYTES = 0.52
# Per trainable LoRA parameter: fp32 weight, fp32 gradient, Adam's two moments (fp32, or 8-bit with an 8-bit optim).
LORA_WEIGHT_BYTES, LORA_STATE_BYTES, LORA_STATE_BYTES_8BIT = 4, 12, 6
# Per logit element of the loss: the 16-bit logits, their fp32 log-softmax and the gradient flowing back.
LOGIT_BYTES = 8
LORA_SHAPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class MemoryPreflightError(RecipeError):
    """The recipe's estimated GPU memory exceeds what is free; the message gives the numbers and the knobs."""


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
            tied=bool(getattr(text, "tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one decoder block."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int] = field(default_factory=dict)  # bytes: weights, lora, lora_states, generation, ...

    @property
    def phase(self) -> str:
        return "generation" if self.parts["generation"] >= self.parts["backward"] else "backward"

    @property
    def total(self) -> int:
        p = self.parts
        return p["weights"] + p["lora"] + p["lora_states"] + max(p["generation"], p["backward"]) + p["margin"]

    def describe(self) -> str:
        p = {key: value / GIB for key, value in self.parts.items()}
        return (
            f"weights {p['weights']:.1f} + LoRA {p['lora']:.2f} + its grads and Adam {p['lora_states']:.2f} + "
            f"max(generation KV cache {p['generation']:.1f}, backward activations and logits {p['backward']:.1f}) + "
            f"margin {p['margin']:.1f} GiB"
        )


def estimate_memory(config, recipe: Recipe, prompt_tokens: int, backend: str = "hf") -> MemoryEstimate:
    """Bytes of GPU memory the recipe needs with the model of `config` whose longest prompt is `prompt_tokens`.

    `backend` matters for dtype (unsloth loads 16-bit), gradient checkpointing (always on with unsloth; for hf when
    `training.trl.gradient_checkpointing` is set) and logits (unsloth computes them in chunks, one sequence at a
    time; TRL without Liger materializes the whole micro-batch)."""
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    t = recipe.training
    quantized = recipe.model.load_in_4bit
    act_bytes = 2 if backend == "unsloth" or quantized else DTYPE_BYTES[recipe.model.dtype]

    weights = shape.linear_params * (NF4_BYTES if quantized else act_bytes) + shape.embedding_params * act_bytes

    lora = t.lora
    adapted = [i for i in (lora.layers_to_transform or range(shape.layers)) if 0 <= i < shape.layers]
    targets = LORA_SHAPES if lora.target_modules == "all-linear" else lora.target_modules
    shapes = shape.linear_shapes()
    lora_params = len(adapted) * sum(lora.r * sum(shapes[name]) for name in targets if name in shapes)

    # Generation: the whole generation batch is sampled at once (at least one group), then evaluation batches.
    steps = t.trl.get("steps_per_generation") or t.gradient_accumulation_steps
    sequences = max(t.num_generations, t.trl.get("generation_batch_size") or t.per_device_train_batch_size * steps)
    kv_per_token = shape.layers * 2 * shape.kv_heads * shape.head_dim * act_bytes
    train_kv = sequences * (prompt_tokens + t.max_completion_length) * kv_per_token
    eval_kv = recipe.eval.batch_size * (prompt_tokens + recipe.eval.max_new_tokens) * kv_per_token
    sampling_logits = max(sequences, recipe.eval.batch_size) * shape.vocab * 4
    generation = max(train_kv, eval_kv) + sampling_logits

    # Backward: activations saved for the backward pass, only from the lowest adapted layer up (below it nothing
    # needs a gradient). Per token and layer: norms, q/k/v, attention output, and the MLP's four intermediates.
    tokens = t.per_device_train_batch_size * (prompt_tokens + t.max_completion_length)
    grad_layers = shape.layers - min(adapted, default=shape.layers)
    per_layer = 6 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate
    checkpointing = backend == "unsloth" or bool(t.trl.get("gradient_checkpointing", False))
    if checkpointing:  # layer inputs kept, one layer's activations recomputed at a time
        activations = tokens * (grad_layers * shape.hidden + per_layer) * act_bytes
    else:
        activations = tokens * grad_layers * per_layer * act_bytes
    logit_rows = t.max_completion_length * (1 if backend == "unsloth" else t.per_device_train_batch_size)
    backward = activations + logit_rows * shape.vocab * LOGIT_BYTES

    state_bytes = LORA_STATE_BYTES_8BIT if "8bit" in str(t.trl.get("optim", "")) else LORA_STATE_BYTES
    resident = weights + lora_params * (LORA_WEIGHT_BYTES + state_bytes) + max(generation, backward)
    # Allocator fragmentation, cuBLAS workspaces, kernels' temporaries.
    margin = 0.1 * resident + 256 * 1024**2
    parts = {"weights": weights, "lora": lora_params * LORA_WEIGHT_BYTES, "lora_states": lora_params * state_bytes,
             "generation": generation, "backward": backward, "margin": margin}
    return MemoryEstimate({key: int(value) for key, value in parts.items()})


def check_fits(estimate: MemoryEstimate, free_bytes: int, recipe: Recipe, device: str = "the GPU") -> None:
    """Raise MemoryPreflightError when `estimate` exceeds `free_bytes`, naming the knobs that shrink it."""
    if estimate.total <= free_bytes:
        return
    knobs = [] if recipe.model.load_in_4bit else ["model.load_in_4bit=true"]
    knobs += ["training.num_generations", "training.max_completion_length", "training.per_device_train_batch_size"]
    if estimate.phase == "backward" and not recipe.training.trl.get("gradient_checkpointing"):
        knobs.append("training.trl.gradient_checkpointing=true (hf)")
    raise MemoryPreflightError(
        f"the recipe needs about {estimate.total / GIB:.1f} GiB of GPU memory but {free_bytes / GIB:.1f} GiB is free "
        f"on {device} ({estimate.describe()}); the {estimate.phase} phase is the peak. Lower it with: "
        f"{', '.join(knobs)} (an estimate: {SKIP_ENV}=1 skips this check)"
    )


def longest_prompt(tokenizer, rows: list[dict]) -> int:
    """Tokens in the longest chat prompt of `rows`, generation prompt included."""
    from toolkit.prompts import prompt_length

    return max((prompt_length(tokenizer, row) for row in rows), default=0)


def preflight(recipe: Recipe, model_path: str, rows: list[dict], backend: str = "hf") -> MemoryEstimate | None:
    """On CUDA, before the model loads: estimate the recipe's memory and refuse if it cannot fit. None on a CPU."""
    import torch

    if not torch.cuda.is_available() or os.environ.get(SKIP_ENV) == "1":
        return None
    from transformers import AutoConfig, AutoTokenizer

    from toolkit.models import loading, ready_tokenizer
    from toolkit.prompts import check_template_takes

    # Before the backend loads the model (whose errors are one line): a hub id that cannot be reached, or a config
    # transformers cannot read, must be one line here too.
    with loading(f"model {model_path}: cannot read its config and tokenizer for the memory preflight"):
        config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    # The prompts are measured through the chat template, before the backend's load refuses a tokenizer without
    # one or prepare_replies a template that refuses the recipe's messages: both were tracebacks here on CUDA.
    ready_tokenizer(tokenizer, model_path)
    check_template_takes(tokenizer, recipe.prompt)
    prompt_tokens = longest_prompt(tokenizer, rows)
    estimate = estimate_memory(config, recipe, prompt_tokens, backend)
    free, total = torch.cuda.mem_get_info()
    device = torch.cuda.get_device_name(torch.cuda.current_device())
    check_fits(estimate, free, recipe, device)
    logger.info("memory preflight: about %.1f GiB needed, %.1f of %.1f GiB free on %s (%s)",
                estimate.total / GIB, free / GIB, total / GIB, device, estimate.describe())
    return estimate
