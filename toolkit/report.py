"""Run outputs: report.json, report.md, eval/predictions.jsonl, plots/*.png and the adapter, each written to a
temporary path and renamed.

A crash mid-write never leaves a half report or half adapter: readers see the previous file or the new one.
The Markdown report and the console table show the same numbers as report.json: each column's mean with its 95%
bootstrap interval, and the paired differences (tuned − base, base − no context), not significant when their
interval spans zero.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fresh_name(path: Path) -> Path:
    """A hidden name beside `path` that no other writer picks (pid and random bytes)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")


PREDICTIONS = "eval/predictions.jsonl"  # a run's per-question answers, under its output folder
EVAL_FILES = ("report.json", "report.md", "predictions.jsonl")  # what `toolkit.evaluate` writes into --out


def file_in_the_way(path: Path) -> Path | None:
    """The file that keeps `path` from being, or becoming, a folder: `path` itself or a parent. A folder to write
    into is checked with it up front, so that a mkdir does not fail with a traceback after minutes of work."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def in_the_way(folder: Path, files: tuple[str, ...] = (), folders: tuple[str, ...] = (),
               whole: tuple[str, ...] = ()) -> str | None:
    """What already sits in `folder` where a file (`files`) or a folder (`folders`, written into; `whole`, replaced
    whole by save_dir_atomic) will be written: checked before the work, since the write would otherwise fail after
    it, with some outputs written and some not."""
    for name in whole:
        if (folder / name).is_symlink():  # save_dir_atomic replaces the link: where it points gets nothing
            return f"{folder / name} is a link, and a folder replaces it whole; link the output folder instead"
    for name in files:
        if (folder / name).is_dir():
            return f"{folder / name} is a folder, and a file is written there"
    for name in (*folders, *whole, *{str(Path(name).parent) for name in files if Path(name).parent != Path(".")}):
        if (folder / name).exists() and not (folder / name).is_dir():
            return f"{folder / name} is a file, and a folder is written there"
    return None


def cannot_write(path: Path) -> str | None:
    """Why no folder can be made at `path` (or written into, when it exists), else None. A folder is made and
    removed at once in the nearest existing parent: a read-only place then fails before minutes of work, not when
    the results are written."""
    parent = next(p for p in (path, *path.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".toolkit-write-check-", dir=parent))
    except OSError as err:
        return f"cannot make a folder in {parent} ({err.strerror or err})"
    return None


def write_atomic(path: Path, text: str | bytes) -> None:
    tmp = _staged(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _staged(path: Path, text: str | bytes) -> Path:
    """`text` written to a fresh temporary name beside `path` (removed again when the write fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with mode 0666 for the kernel to apply the umask, as a plain open() would (0644 under umask 022);
    # mkstemp's file stays 0600 once renamed.
    tmp = _fresh_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_dir_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """`save(tmp_dir)` writes a folder; it then replaces `path` (a directory cannot be replaced in one rename,
    so the old one is moved aside first and removed only after the new one is in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(path)
    tmp.mkdir()  # the mode a plain mkdir gives (0755 under umask 022); mkdtemp's would stay 0700
    try:
        save(tmp)
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            _remove(old)  # a leftover of a crash: whatever it is, it must not block the rename
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:  # the earlier folder goes back: never neither of the two
                os.replace(old, path)
            raise
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def process_running(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (True for a pid no process of ours can have)."""
    if not 0 < pid < 2**31:  # 0 would signal our process group; larger ones overflow os.kill: not our pids
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but another user's
        return True
    return True


def remove_left_behind(folder: Path, left: Callable[[Path], bool], by: str, log: logging.Logger) -> list[Path]:
    """Remove each entry of `folder` that `left` says a writer killed mid-way (kill -9, a lost machine: no
    `finally` ran) left behind, and return them; one that cannot be removed is warned about on `log` and kept."""
    removed = []
    for path in sorted(folder.iterdir()):
        try:
            if not left(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass  # another writer starting at the same time removed it first
        except OSError as err:
            log.warning("cannot remove %s, left by %s: %s", path, by, err)
            continue
        removed.append(path)
    return removed


def remove_whole(path: Path) -> None:
    """Remove a folder whole or not at all: it is renamed to a fresh hidden name first (pid and random bytes, so a
    leftover of an earlier failed removal never blocks the rename), so a removal that fails half way leaves no
    half folder under `path` (an adapter_config.json without its weights). A link goes as a link: where it points
    is not the caller's to delete. Raises OSError."""
    if path.is_symlink():
        path.unlink()
        return
    away = _fresh_name(path)
    path.rename(away)
    shutil.rmtree(away)


def _remove(path: Path) -> None:
    """Remove a folder, a file or a link (the link only, never what it points to); nothing there is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


COLUMN_TITLES = {"no_context": "no context", "base": "base + RAG", "tuned": "tuned + RAG"}
DIFFERENCE_TITLES = {"base - no_context": "base − no context", "tuned - base": "tuned − base"}
HEADLINE = ("answer_match", "token_f1", "context_grounding", "format", "completion_tokens", "truncated",
            "retrieval_recall", "reward_total")
VERDICTS = {"tuned - base": "GRPO vs plain RAG", "base - no_context": "RAG vs no context"}


def columns(report: dict) -> list[str]:
    return [label for label in COLUMN_TITLES if isinstance(report.get(label), dict)]


def difference_keys(report: dict) -> list[str]:
    found = report.get("differences", {})
    return [key for key in DIFFERENCE_TITLES if key in found]


def metric_names(report: dict) -> list[str]:
    names = [name for label in columns(report) for name in report[label]]
    return list(dict.fromkeys([*[h for h in HEADLINE if h in names], *names]))


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(found: dict | None, signed: bool = False) -> str:
    return f"[{_fmt(found['low'], signed)}, {_fmt(found['high'], signed)}]" if found else ""


def cell(report: dict, label: str, name: str) -> tuple[str, str]:
    """(mean, interval) texts of one column's metric."""
    return _fmt(report[label].get(name)), _interval(report.get("intervals", {}).get(label, {}).get(name))


def difference_cell(report: dict, key: str, name: str) -> tuple[str, str, bool | None]:
    """(mean, interval, significant) texts of one difference; significant is None when there is no interval."""
    found = report.get("differences", {}).get(key, {}).get(name)
    if not found:
        return "n/a", "", None
    return _fmt(found["mean"], signed=True), _interval(found, signed=True), found["significant"]


def verdicts(report: dict, name: str = "answer_match") -> list[str]:
    """One sentence per difference for a headline metric, e.g. "GRPO vs plain RAG (tuned − base), answer_match:
    +0.107 [+0.036, +0.179] over 56 questions: significant"."""
    lines = []
    for key in difference_keys(report):
        found = report["differences"][key].get(name)
        if found:
            verdict = ("significant" if found["significant"] else
                       "not significant (the interval spans 0)" if found["low"] <= 0 <= found["high"] else
                       "not significant (too few questions: see toolkit.metrics.MIN_QUESTIONS)")
            lines.append(
                f"{VERDICTS[key]} ({DIFFERENCE_TITLES[key]}), {name}: {_fmt(found['mean'], True)} "
                f"{_interval(found, True)} over {plural(found['questions'], 'question')}: {verdict}"
            )
    return lines


def table_console(stderr: bool = False) -> Console:
    """A console for the comparison table: a terminal's own width, 160 columns when writing to a file or pipe (rich
    would use 80 there and squeeze five interval columns into unreadable wraps)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def comparison_table(report: dict) -> Table:
    """The console table: each column's mean over its 95% interval, then the differences (n.s.: not significant)."""
    confidence = report.get("eval", {}).get("bootstrap", {}).get("confidence", 0.95)
    table = Table(title=f"{plural(report['eval']['questions'], 'eval question')}, greedy; mean over its "
                  f"{confidence:.0%} interval; n.s.: interval spans 0, or fewer than 5 questions")
    table.add_column("metric", no_wrap=True)
    for label in columns(report):
        table.add_column(COLUMN_TITLES[label], justify="right")
    for key in difference_keys(report):
        table.add_column(DIFFERENCE_TITLES[key], justify="right")
    for name in metric_names(report):
        cells = ["\n".join(filter(None, cell(report, label, name))) for label in columns(report)]
        for key in difference_keys(report):
            mean, interval, sig = difference_cell(report, key, name)
            mark = "" if sig is None else (" [bold green]*[/]" if sig else " [dim]n.s.[/]")
            cells.append("\n".join(filter(None, [mean + mark, interval])))
        table.add_row(escape(name), *cells)  # a reward label such as "len[/short]" is no markup
    return table


def markdown_table(report: dict) -> list[str]:
    labels, keys = columns(report), difference_keys(report)
    header = ["metric", *(COLUMN_TITLES[label] for label in labels), *(DIFFERENCE_TITLES[key] for key in keys)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name in metric_names(report):
        cells = [" ".join(filter(None, cell(report, label, name))) for label in labels]
        for key in keys:
            mean, interval, sig = difference_cell(report, key, name)
            if sig is not None:
                mean = f"**{mean}**" if sig else f"{mean} (n.s.)"
            cells.append(" ".join(filter(None, [mean, interval])))
        lines.append(f"| {_md_cell(name)} | " + " | ".join(cells) + " |")
    return lines


def _md_cell(text: str) -> str:
    """`text` as one Markdown table cell: a "|" in a reward label would split it, a newline end the row."""
    return " ".join(text.split()).replace("|", r"\|")


def plural(count: int | str, noun: str) -> str:
    """"1 step", "2 steps" (and "? steps" for a count unknown)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def step_span(first: int, last: int) -> str:
    """"step 5", "steps 5-6": the steps a resumed run trained itself."""
    return f"step {last}" if first == last else f"steps {first}-{last}"


def training_header(training: dict) -> str:
    """The report's words for the training: "28 GRPO steps in 245 s"; for a resumed run (report.json's
    `training.resumed_from_step`) which steps `wall_seconds` timed, since the others came from the checkpoint."""
    steps, seconds, resumed = training["steps"], training["wall_seconds"], training.get("resumed_from_step")
    if resumed is None:
        return f"{plural(steps, 'GRPO step')} in {seconds:.0f} s"
    if steps <= resumed:
        return f"{plural(steps, 'GRPO step')}, all from the checkpoint at step {resumed} (resumed; none trained again)"
    return f"{plural(steps, 'GRPO step')} ({step_span(resumed + 1, steps)} trained in {seconds:.0f} s, resumed from " \
           f"step {resumed})"


def render_markdown(report: dict) -> str:
    evaluation, training = report["eval"], report.get("training")
    bootstrap = evaluation.get("bootstrap", {})
    model = f"Model `{report['recipe']['model']['name_or_path']}`"
    if training:
        model += f", {training_header(training)}"
    if report.get("adapter"):
        model += f", adapter `{report['adapter']}`"
    lines = [
        f"# Run report: {report['recipe']['output_dir']}",
        "",
        f"{model}; evaluated on {plural(evaluation['questions'], 'held-out question')} (greedy decoding, the same "
        "prompts for "
        f"every column; retrieval top_k = {evaluation.get('top_k', '?')}).",
        "",
    ]
    if report.get("warnings"):
        lines += ["## Warnings", "", *(f"- **Training looked broken:** {w}" for w in report["warnings"]), ""]
    lines += ["## Does GRPO beat plain RAG, and does RAG beat no context?", ""]
    lines += [f"- {line}" for line in verdicts(report)] + [""]
    lines += markdown_table(report)
    lines += [
        "",
        f"Each cell: the mean, then its {bootstrap.get('confidence', 0.95):.0%} paired bootstrap interval over "
        f"questions ({bootstrap.get('resamples', '?')} resamples, seed {bootstrap.get('seed', '?')}). Differences in "
        "**bold** are significant; (n.s.) marks one whose interval spans 0, or one over fewer than 5 questions.",
        "",
        "Columns: " + "; ".join(f"**{COLUMN_TITLES[k]}**: {v}" for k, v in evaluation.get("columns", {}).items())
        + ".",
        "",
        "Metrics: `answer_match` exact match with the gold answer or an alias after normalization; `token_f1` token "
        "F1 of the extracted answer; `context_grounding` share of the answer's content words found in the retrieved "
        "chunks; `format` strict `<think>…</think><answer>…</answer>`; `completion_tokens` mean length; `truncated` "
        "share cut at the token limit; `retrieval_recall` gold document among the retrieved chunks (recall@top_k; "
        "n/a without context); `reward_total` the recipe's weighted reward sum; `reward/<label>` each reward.",
        "",
    ]
    if training and training.get("plots"):
        lines += ["## Training curves", ""]
        for path in training["plots"]:
            lines += [f"![{Path(path).stem}]({path})", ""]
        lines += ["The numbers behind the plots are in `report.json` under `training.curves`.", ""]
    files = f"`{evaluation.get('predictions', 'eval/predictions.jsonl')}` (per-question answers and scores)"
    if training:
        files = f"`adapter/` (peft LoRA adapter), `report.json`, {files}, `plots/`, `index/`"
    else:
        files = f"`report.json`, {files}"
    lines += [f"Files: {files}.", ""]
    return "\n".join(lines)


def write_report(output_dir: Path, report: dict, predictions: list[dict], images: dict[str, bytes] | None = None):
    """Predictions (at `report["eval"]["predictions"]`), images (relative path → PNG bytes), then report.json and
    report.md: the report comes last, so every file it names already exists."""
    # NaN and inf (a reward that returned None for a whole batch logs a NaN mean; a diverging KL, inf) are not JSON:
    # json.dumps would write NaN and Infinity, which strict readers (jq, JavaScript) refuse. They become null.
    from toolkit.recipe_yaml import RecipeError

    predictions, report = _finite(predictions), _finite(report)
    predictions_path = output_dir / report["eval"].get("predictions", "eval/predictions.jsonl")
    files = [(predictions_path, "".join(json.dumps(p) + "\n" for p in predictions)),
             *((output_dir / path, data) for path, data in (images or {}).items()),
             (output_dir / "report.json", json.dumps(report, indent=2) + "\n"),
             (output_dir / "report.md", render_markdown(report))]
    # Every file is written before any is renamed into place: a full disk (or an unwritable folder) then leaves
    # the earlier report and predictions as they were, not new predictions under the old report, and is one line.
    staged = []
    try:
        for path, text in files:
            staged.append((_staged(path, text), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as err:
        raise RecipeError(f"cannot write the report in {output_dir}: {err.strerror or err}"
                          + (f" ({err.filename})" if err.filename else "")) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _finite(value):
    """`value` with every NaN or infinite float, however deeply nested, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
