"""Does a GGUF file behave like the model that was trained? Greedy tokens in llama.cpp vs the merged model in
transformers, on prompts in the training format; plus the llama.cpp helpers `toolkit.chat` and the benchmark share.

Each prompt is rendered with the merged model's chat template and tokenized twice, by transformers and by the GGUF's
own tokenizer (`tokenizer_match`); llama.cpp generates from its own tokens, as any llama.cpp program would, and the
tokens are compared up to the first stop token (`first_divergence`: the index of the first different one).
"""

from __future__ import annotations

import logging
import os
import unittest.mock
from pathlib import Path

from toolkit.models import ModelError, first_line
from toolkit.recipe import Recipe

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install -e '.[export]' (llama-cpp-python==0.3.36)"


class ExportError(ModelError):
    """An export that cannot be made; the message says what to install or change."""


def require_llama_cpp():
    """The llama_cpp module, or an ExportError naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"GGUF quantization, verification and chat need llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def cpu_threads() -> int:
    # The same thread budget torch uses (OMP_NUM_THREADS), so CPU comparisons are like for like.
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


def verification_messages(recipe: Recipe, count: int) -> tuple[list[str], list[list[dict]]]:
    """The first `count` eval questions (train when there are none) as chat prompts in the training format, with
    context from the run's index when it exists."""
    from toolkit.data import load_dataset
    from toolkit.index import open_index
    from toolkit.index_store import IndexUnavailable
    from toolkit.prompts import build_messages

    dataset = load_dataset(recipe.data)
    questions = [qa.question for qa in (dataset.eval or dataset.train)[:count]]
    try:
        hits = open_index(recipe, create=False).search(questions, recipe.retrieval.top_k)
    except IndexUnavailable as err:
        # Not only a missing index: one refused as incomplete or chunked otherwise says so, or "no index" misleads.
        logger.info("%s: verification prompts carry no context", err)
        hits = [[] for _ in questions]
    messages = [
        build_messages(recipe.prompt, q, [h.text for h in found]) for q, found in zip(questions, hits, strict=True)
    ]
    return questions, messages


class Reference:
    """Greedy tokens of the merged transformers model (fp32 on CPU) on the verification prompts."""

    def __init__(self, questions, texts, prompt_ids, tokens, stop, max_new_tokens):
        self.questions, self.texts, self.prompt_ids, self.tokens = questions, texts, prompt_ids, tokens
        self.stop, self.max_new_tokens = stop, max_new_tokens

    @classmethod
    def from_merged(cls, recipe: Recipe, merged_dir: Path) -> Reference:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        questions, prompts = verification_messages(recipe, recipe.export.verify_prompts)
        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        stop = stop_ids(model.generation_config, tokenizer)
        n = recipe.export.verify_tokens
        texts, prompt_ids, tokens = [], [], []
        for messages in prompts:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]), max_new_tokens=n, do_sample=False, temperature=None, top_p=None,
                    top_k=None, eos_token_id=sorted(stop), pad_token_id=sorted(stop)[0],
                )
            texts.append(text)
            prompt_ids.append(ids)
            tokens.append(out[0, len(ids) :].tolist())
        return cls(questions, texts, prompt_ids, tokens, stop, n)


def stop_ids(generation_config, tokenizer) -> set[int]:
    eos = generation_config.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos}
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return ids


def trained_context(path: Path) -> int | None:
    """The context a GGUF's model was trained for (`<arch>.context_length`, what llama.cpp's `-c 0` takes); None
    when the file does not say, or is no GGUF gguf can read (llama.cpp's own load then says what is wrong)."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
        arch = fields.get("general.architecture")
        length = arch is not None and fields.get(f"{arch.contents()}.context_length")
        return int(length.contents()) if length else None
    # A file cut short in its header (a copy or download stopped) fails in gguf's reader with an IndexError, a
    # repeated key with a KeyError, a name that is no UTF-8 with a UnicodeDecodeError (a ValueError).
    except (OSError, ValueError, IndexError, KeyError) as err:
        logger.debug("%s: no trained context length read (%s: %s)", path, type(err).__name__, err)
        return None


def load_llama(path: Path, n_ctx: int = 4096, **kwargs):
    """A llama.cpp model on the CPU; close() it when done (its destructor fails at interpreter exit).

    Loaded without the CPU backend's extra buffer types (llama.cpp's `--no-repack`: weights repacked for AMX and
    wider SIMD kernels). Measured on a Xeon with AVX-512 and AMX-INT8, llama-cpp-python 0.3.36 built natively: with
    them, decoding a Q8_0 or Q4_K_M file segfaults the interpreter (F16 and F32 ran); without them all four ran.
    `Llama()` has no argument for it, so the default params it starts from are swapped while it loads."""
    llama_cpp = require_llama_cpp()
    threads = cpu_threads()
    low_level = llama_cpp.llama_cpp
    default_params = low_level.llama_model_default_params

    def params_without_extra_bufts():
        params = default_params()
        params.use_extra_bufts = False
        return params

    with unittest.mock.patch.object(low_level, "llama_model_default_params", params_without_extra_bufts):
        try:
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   seed=0, verbose=False, **kwargs)
        except ValueError as err:
            # All llama-cpp-python says of a file it cannot load is "Failed to load model from file"; the reason
            # went to llama.cpp's log, which verbose=False mutes.
            raise ModelError(f"{path}: llama.cpp cannot load it ({first_line(err)}): not a GGUF model, truncated, "
                             "or an architecture this llama.cpp does not know") from None


def llama_greedy(llm, prompt_ids: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
    """Greedy tokens from llama.cpp, ending with (and including) a stop token as transformers' generate does."""
    llm.reset()  # no KV-cache reuse between prompts: every prompt is evaluated the same way
    out: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if token in stop or len(out) >= max_new_tokens:
            break
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or where the shorter one ends); None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def verify_gguf(path: Path, reference: Reference, exact: bool) -> dict:
    """Load the file in llama.cpp, tokenize each prompt with its own tokenizer, generate greedily, compare."""
    longest = max((len(ids) for ids in reference.prompt_ids), default=0)
    llm = load_llama(path, n_ctx=longest + reference.max_new_tokens + 64)
    prompts = []
    try:
        for text, ids, expected in zip(reference.texts, reference.prompt_ids, reference.tokens, strict=True):
            own = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            got = llama_greedy(llm, own, reference.max_new_tokens, reference.stop)
            prompts.append({"tokenizer_match": own == ids, "tokens": len(got),
                            "first_divergence": first_divergence(got, expected)})
    finally:
        llm.close()
    match = all(p["first_divergence"] is None for p in prompts)
    divergences = [p["first_divergence"] for p in prompts if p["first_divergence"] is not None]
    result = {
        "required": "exact" if exact else "loads and generates",
        "match": match,
        "tokenizer_match": all(p["tokenizer_match"] for p in prompts),
        "first_divergence": min(divergences) if divergences else None,
        "prompts": prompts,
        "ok": match if exact else all(p["tokens"] > 0 for p in prompts),
    }
    log = logger.info if result["ok"] else logger.error
    log("verify %s: %s (first divergence %s, tokenizer match %s)", path.name,
        "match" if match else "differs", result["first_divergence"], result["tokenizer_match"])
    return result
