"""`python -m toolkit.export RECIPE [--formats adapter,merged,gguf-f16,gguf-q8_0,gguf-q4_k_m] [--run DIR]`: leave
the toolkit with a model that runs elsewhere, and prove the GGUF files behave like the model that was trained.

Writes `<run>/export/` (run: the recipe's output_dir unless --run):
- `adapter/`: the peft LoRA adapter of the run.
- `merged/`: base + LoRA merged into plain weights (safetensors, config, tokenizer, chat template). The base is
  reloaded unquantized first (export.dtype; auto: the recipe's dtype, bfloat16 after 4-bit training): a LoRA is
  never merged into quantized weights. Its chat template is the recipe's `prompt` (`prompt.open_think`): an export
  whose `prompt` differs from the one the run's report.json records is refused before anything is written.
- `model-f32.gguf`, `model-f16.gguf`: merged/ converted by `toolkit.gguf_convert`, offline.
- `model-q8_0.gguf`, `model-q4_k_m.gguf`: made by llama.cpp's own quantizer from the F32 (else F16) GGUF the same
  export writes, or, when it writes neither, from one at the merge's own precision converted aside.
- `manifest.json`: every file with its size and sha256, the quant types, and per GGUF file the comparison of its
  first greedy tokens on fixed prompts with the merged transformers model. The GGUF at the merge's own precision
  must match exactly: F32 for a float32 merge (the CPU path, tiny models), F16 for a 16-bit one; the others report
  where they first diverge. (Measured on SmolLM2-135M: F32 matched on every prompt, F16 diverged at token 19 of
  one, because llama.cpp rounds activations to f16 for F16 weights; transformers on the same f16-rounded weights
  did not diverge. The same run merged in bfloat16: F16 matched on every prompt.) `merge_dtype` and
  `exact_format` name that precision and that GGUF; each is null when the export merged nothing (`--formats
  adapter`) or made no GGUF file. `older_files` names what an earlier export left in export/: not this export's,
  not verified.

Every file and folder is written under a temporary name and renamed, so a crash never leaves half a file. An export
removes the earlier manifest.json before it writes anything and writes its own last: an export/ without manifest.json
holds an export that failed or was killed, whose files are neither described nor verified.
Those names hold the pid of the export writing them: what an export killed mid-way left (hundreds of MB) is removed
by the next export, unless that process still runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import typing
from datetime import datetime, timezone
from pathlib import Path

from toolkit.export_folder import GGUF_FILES, check_outputs, dir_entry, file_entry, remove_leftovers
from toolkit.models import check_adapter, load_adapter, loading, write_failure
from toolkit.prompts import prepare_replies
from toolkit.recipe import ExportFormat, PromptSection, Recipe
from toolkit.report import save_dir_atomic, write_atomic
from toolkit.run_record import base_model_path, prompt_differences, prompt_mismatch
from toolkit.verify import ExportError, Reference, cpu_threads, require_llama_cpp, verify_gguf

logger = logging.getLogger("toolkit.export")  # not __name__: "__main__" under python -m

FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
UNQUANTIZED = ("gguf-f32", "gguf-f16")  # written by our converter; the others by llama.cpp's quantizer
QUANTIZER_FTYPES = {"gguf-q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "gguf-q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def exact_format(dtype: str) -> str:
    """The GGUF type that holds the merged weights unrounded, so it must reproduce their greedy tokens exactly."""
    return "gguf-f32" if dtype == "float32" else "gguf-f16"


def merge_dtype(recipe: Recipe) -> str:
    if recipe.export.dtype != "auto":
        return recipe.export.dtype
    if getattr(recipe.model, "load_in_4bit", False) and recipe.model.dtype == "float32":
        return "bfloat16"  # a QLoRA run on a GPU: 16-bit, not a 4x larger float32 copy
    return recipe.model.dtype


def default_formats(dtype: str) -> tuple[str, ...]:
    return ("adapter", "merged", exact_format(dtype), "gguf-q8_0", "gguf-q4_k_m")


def check_export_ready(formats: list[str], verify: bool) -> None:
    """Fail fast when the formats need llama-cpp-python and it is not installed."""
    ggufs = [f for f in formats if f in GGUF_FILES]
    if any(f in QUANTIZER_FTYPES for f in ggufs) or (ggufs and verify):
        require_llama_cpp()


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        given = ", ".join(unknown) or "(none)"
        raise ExportError(f"unknown export format(s) {given}; choose from {', '.join(FORMATS)}")
    return formats


# ------------------------------------------------------------------------------------------------- export


def export(recipe: Recipe, run_dir: str | Path | None = None, formats: list[str] | None = None) -> dict:
    """Export a finished run; returns the manifest (also written to `<run>/export/manifest.json`)."""
    from toolkit import gguf_convert

    recipe_run = Path(recipe.output_dir)
    run_dir = Path(run_dir or recipe.output_dir)
    recipe = recipe.model_copy(update={"output_dir": run_dir})  # the index and adapter are read from the run
    dtype = merge_dtype(recipe)
    formats = [f for f in FORMATS if f in (formats or recipe.export.formats or default_formats(dtype))]
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"no adapter in {adapter_dir}: {_no_adapter_hint(run_dir, recipe_run)}")
    ggufs = [f for f in formats if f in GGUF_FILES]
    # The merged model and the GGUF files keep the chat template this recipe's prompt makes (prompt.open_think)
    # and are verified on its prompts: another prompt than the run's would ship a model asked unlike its training.
    # The adapter alone holds no template.
    differences = prompt_differences(recipe, run_dir) if "merged" in formats or ggufs else []
    if differences:
        raise ExportError(prompt_mismatch(differences, "export"))
    check_export_ready(formats, recipe.export.verify)  # before minutes of merging, not after
    # The adapter alone needs no base: it is only named in the manifest, as the run recorded it.
    base_path = base_model_path(recipe, run_dir, resolve="merged" in formats or bool(ggufs))
    if ggufs:
        gguf_convert.check_architecture(_config_dict(base_path))
    if "merged" in formats or ggufs:
        check_adapter(adapter_dir)  # a broken adapter fails before anything is written
    out = run_dir / "export"
    check_outputs(out, formats)  # found now, not when the manifest is written after minutes of merging
    created = not out.exists()
    if not created:
        remove_leftovers(out)
        # The outputs are replaced one by one from here: the earlier manifest would describe (ok: true) a mix.
        (out / "manifest.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _export(recipe, run_dir, formats, dtype, adapter_dir, base_path, out)
    except BaseException as err:
        if created:  # everything in it is this failed export's: no export/ without a manifest
            shutil.rmtree(out, ignore_errors=True)
        reason = write_failure(err)  # a full disk while writing hundreds of MB, a file gone: one line
        if reason:
            raise ExportError(f"the export to {out} failed: {reason}") from None
        raise
    return manifest


def _no_adapter_hint(run_dir: Path, recipe_run: Path) -> str:
    """What to do about a run folder without adapter/: a run interrupted after a checkpoint is finished with
    --resume, and its latest checkpoint is a LoRA adapter already."""
    from toolkit.checkpoints import latest_checkpoint

    if (run_dir / "adapter_config.json").is_file():
        if run_dir.parent.name == "trainer":  # a checkpoint: its parent is no run
            return (f"{run_dir} is a checkpoint of the run {run_dir.parent.parent}, not a run: export the run "
                    f"(--run {run_dir.parent.parent}) once it has finished, or use the checkpoint, itself a LoRA "
                    f"adapter: --adapter {run_dir} with toolkit.chat or toolkit.evaluate")
        return f"did you mean --run {run_dir.parent}?"
    checkpoint = latest_checkpoint(run_dir / "trainer")
    if checkpoint is None:
        return "train first (python -m toolkit.run RECIPE) or pass --run DIR"
    where = "" if run_dir.resolve() == recipe_run.resolve() else f" output_dir={run_dir}"  # --run DIR
    return (f"the run stopped before its end: finish it with the recipe and overrides it ran with plus --resume "
            f"(python -m toolkit.run RECIPE{where} --resume), or use its latest checkpoint, itself a LoRA adapter: "
            f"--adapter {checkpoint} with toolkit.chat or toolkit.evaluate")


def _export(recipe: Recipe, run_dir: Path, formats: list[str], dtype: str, adapter_dir: Path, base_path: str,
            out: Path) -> dict:
    from toolkit import gguf_convert

    exact = exact_format(dtype)
    ggufs = [f for f in formats if f in GGUF_FILES]
    entries: list[dict] = []
    # Intermediates nobody asked for; the pid in the name tells a later export whether this one still runs.
    work = Path(tempfile.mkdtemp(prefix=f".work-{os.getpid()}-", dir=out))
    try:
        if "adapter" in formats:
            start = time.perf_counter()
            save_dir_atomic(out / "adapter", lambda tmp: shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True))
            entries.append(dir_entry(out, "adapter", time.perf_counter() - start))
        merged_dir = out / "merged" if "merged" in formats else work / "merged"
        if "merged" in formats or ggufs:
            start = time.perf_counter()
            merge(base_path, adapter_dir, dtype, merged_dir, recipe.prompt)
            if "merged" in formats:
                entries.append(dir_entry(out, "merged", time.perf_counter() - start, dtype=dtype))
        # Quantized files are made from the most precise unquantized file asked for, else from the exact one.
        master = next((f for f in UNQUANTIZED if f in ggufs), exact)
        for fmt in ggufs:
            name, quant = GGUF_FILES[fmt]
            start = time.perf_counter()
            if fmt in UNQUANTIZED:
                gguf_convert.convert(merged_dir, out / name, quant.lower())
            else:
                source = out / GGUF_FILES[master][0] if master in ggufs else work / GGUF_FILES[master][0]
                if not source.is_file():
                    gguf_convert.convert(merged_dir, source, GGUF_FILES[master][1].lower())
                quantize(source, out / name, fmt)
            entries.append(file_entry(out, fmt, name, quant, time.perf_counter() - start))
        if ggufs and recipe.export.verify:
            reference = Reference.from_merged(recipe, merged_dir)
            for entry in entries:
                if entry["format"] in GGUF_FILES:
                    entry["verify"] = verify_gguf(out / entry["path"], reference, exact=entry["format"] == exact)
            prompts = reference.questions
        else:
            prompts = []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # What an earlier export left (a model-f16.gguf before this `--formats merged`) may hold another adapter's
    # weights: said, and named in the manifest, so that nobody ships it as this run's.
    made = {entry["path"] for entry in entries}
    older = [name for name in ("adapter/", "merged/", *(file for file, _ in GGUF_FILES.values()))
             if name not in made and (out / name).exists()]
    for name in older:
        logger.warning("%s is left from an earlier export, not made by this one (the manifest lists it under "
                       "older_files): delete it, or export it again", out / name)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "base_model": base_path,
        "adapter": str(adapter_dir),
        "formats": formats,
        # Null when nothing was merged (an adapter-only export) / no GGUF was made: neither applies then.
        "merge_dtype": dtype if "merged" in formats or ggufs else None,
        "exact_format": exact if ggufs else None,  # the GGUF that must reproduce the merged model's greedy tokens
        "verify_prompts": prompts,
        "files": entries,
        "older_files": older,  # in export/, from an earlier export: not described or verified here
        "ok": all(entry.get("verify", {}).get("ok", True) for entry in entries),
    }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _config_dict(model_path: str) -> dict:
    from transformers import AutoConfig

    with loading(f"base model {model_path}: cannot read its config"):
        return AutoConfig.from_pretrained(model_path).to_dict()


def merge(base_path: str, adapter_dir: Path, dtype: str, target: Path, prompt: PromptSection) -> None:
    """Reload the base unquantized in `dtype`, merge the LoRA into it and save it (with tokenizer) at `target`;
    the saved chat template opens each reply as the recipe's `prompt` did in training (`prompt.open_think`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = _config_dict(base_path).get("quantization_config")
    if quantized:
        raise ExportError(
            f"base model {base_path} is stored quantized ({quantized.get('quant_method', '?')}); merging needs its "
            "16-bit weights: set model.name_or_path to the unquantized model"
        )
    logger.info("merging %s into %s (%s)", adapter_dir, base_path, dtype)
    with loading(f"base model {base_path}: cannot load it"):
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    model = load_adapter(base, adapter_dir).merge_and_unload()
    with loading(f"base model {base_path}: cannot load its tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    prepare_replies(tokenizer, [], prompt)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # transformers 5 writes the chat template as chat_template.jinja

    save_dir_atomic(target, save)


def quantize(source: Path, target: Path, fmt: str) -> None:
    """llama.cpp's own quantizer (the library llama-quantize wraps), written to a temp name then renamed."""
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_FTYPES[fmt])
    params.nthread = cpu_threads()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with _native_output() as lines:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        logger.debug("llama.cpp quantizer:\n%s", "\n".join(lines))
        if status != 0:
            detail = " | ".join(lines[-3:])
            raise ExportError(f"llama.cpp could not quantize {source} to {GGUF_FILES[fmt][1]}: {detail}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _native_output():
    """Capture what native code writes to the process's stdout/stderr: llama.cpp's quantizer prints a line per
    tensor there, past Python's streams and past llama-cpp-python's log callback."""
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers, before the descriptors point back
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


# ------------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from toolkit.cli import ERRORS, Parser, fail, non_empty, run_folder, setup_logging
    from toolkit.recipe import load_recipe

    parser = Parser("python -m toolkit.export", __doc__)
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_overrides("dotted overrides, e.g. export.verify=false")
    parser.add_argument("--formats", type=non_empty,
                        help=f"comma-separated, from: {','.join(FORMATS)} (default: the recipe's export.formats, "
                        f"else {','.join(default_formats('float32'))}; gguf-f16 for 16-bit models)")
    parser.add_argument("--run", type=run_folder,
                        help="the run folder holding adapter/ (default: the recipe's output_dir)")
    args = parser.parse_intermixed_args(argv)
    console = setup_logging()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        manifest = export(recipe, args.run, parse_formats(args.formats) if args.formats is not None else None)
    except ERRORS as err:
        return fail(console, err)
    except KeyboardInterrupt:  # Ctrl-C while merging, converting or verifying: the usual exit status, no traceback
        console.print("interrupted")
        return 130
    table = Table("format", "path", "MB", "quant", "seconds", "greedy tokens vs transformers")
    for entry in manifest["files"]:
        check = entry.get("verify")
        verdict = "" if check is None else "match" if check["match"] else f"diverge at {check['first_divergence']}"
        table.add_row(entry["format"], entry["path"], f"{entry['bytes'] / 1e6:.1f}", entry.get("quant_type", ""),
                      f"{entry['seconds']:.1f}", verdict)
    out = Console()
    out.print(table)
    out.print(f"manifest: {Path(manifest['run']) / 'export' / 'manifest.json'}", highlight=False, soft_wrap=True,
              markup=False)  # a run folder may be named "run[b]", which rich would read as markup
    if not manifest["ok"]:
        console.print(f"[red]error:[/] {manifest['exact_format']} does not reproduce the merged model's greedy tokens")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
