"""A run's `export/` folder: the names `toolkit.export` writes there, what is in their way, what an export killed
mid-way left there, and the manifest's entries for the files it wrote (size and sha256 of each).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from toolkit.report import cannot_write, in_the_way, process_running, remove_left_behind
from toolkit.verify import ExportError

logger = logging.getLogger("toolkit.export")

GGUF_FILES = {  # format → (file name, quant type)
    "gguf-f32": ("model-f32.gguf", "F32"),
    "gguf-f16": ("model-f16.gguf", "F16"),
    "gguf-q8_0": ("model-q8_0.gguf", "Q8_0"),
    "gguf-q4_k_m": ("model-q4_k_m.gguf", "Q4_K_M"),
}
OUTPUTS = ("adapter", "merged", "manifest.json", *(file for file, _ in GGUF_FILES.values()))  # what export/ gets
# The temporary names in export/, each with its writer's pid: _export's work folder (.work-<pid>-<random>),
# save_dir_atomic and write_atomic (.<output>.<pid>.<8 hex>), the GGUF converter and quantizer (.<output>.<pid>.tmp).
TEMP_NAMES = (
    re.compile(r"\.work-(\d+)-.+"),
    re.compile(rf"\.(?:{'|'.join(map(re.escape, OUTPUTS))})\.(\d+)\.(?:[0-9a-f]{{8}}|tmp)"),
)


def check_outputs(out: Path, formats: list[str]) -> None:
    """ExportError when something in `out` (a run's export/) is in the way of what `formats` write there."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder: move it away to export there")
    reason = cannot_write(out)  # a read-only run folder: one line now, not an OSError traceback
    if reason:
        raise ExportError(f"{out}: {reason}; copy the run somewhere writable and pass --run DIR")
    blocked = in_the_way(out, files=("manifest.json", *(GGUF_FILES[f][0] for f in formats if f in GGUF_FILES)),
                         whole=tuple(f for f in ("adapter", "merged") if f in formats))
    if blocked:
        raise ExportError(f"{blocked}; move it away to export there")


def remove_leftovers(out: Path) -> list[str]:
    """Remove from `out` what an export killed mid-way left under its temporary names, and return those names; an
    export still running keeps its own (its pid is in the names)."""

    def left(path: Path) -> bool:
        pid = next((int(m.group(1)) for m in (p.fullmatch(path.name) for p in TEMP_NAMES) if m), None)
        return pid is not None and not process_running(pid)

    removed = [path.name for path in remove_left_behind(out, left, "an interrupted export", logger)]
    if removed:
        logger.info("removed what an interrupted export left in %s: %s", out, ", ".join(removed))
    return removed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(out: Path, fmt: str, name: str, quant: str, seconds: float) -> dict:
    path = out / name
    return {"format": fmt, "path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "quant_type": quant, "seconds": round(seconds, 2)}


def dir_entry(out: Path, name: str, seconds: float, **extra) -> dict:
    files = [
        {"path": str(p.relative_to(out)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted((out / name).rglob("*")) if p.is_file()
    ]
    return {"format": name, "path": f"{name}/", "bytes": sum(f["bytes"] for f in files), "files": files,
            "seconds": round(seconds, 2), **extra}
