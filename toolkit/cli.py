"""What the commands (`toolkit.run`, `toolkit.index`, `toolkit.search`, ...) share: logging, recipe loading,
one-line errors, progress."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from toolkit.data import DataError, Dataset, load_dataset
from toolkit.models import ModelError
from toolkit.recipe import Recipe, RecipeError, load_recipe
from toolkit.rewards import RewardError

# What a command reports as one line and exit status 2; anything else is a bug and keeps its traceback. A reward
# that fails (a user's own, say) is the user's to fix: RewardError names the reward and the sample.
ERRORS = (RecipeError, DataError, ModelError, RewardError)


class Parser(argparse.ArgumentParser):
    """The commands' argument parser. Its description is the first paragraph of `doc` (the module docstring) whole,
    where argparse users often take a first line cut mid-sentence; a usage error is one line and exit 2, like
    every other bad input, rather than the usage block and the error under it."""

    def __init__(self, prog: str, doc: str, **kwargs):
        super().__init__(prog=prog, description=" ".join(doc.strip().split("\n\n")[0].split()), **kwargs)

    def add_overrides(self, help: str) -> None:
        # default=[]: without one argparse counts a "*" positional as required and lists it in "the following
        # arguments are required: recipe, overrides", when only the recipe is missing.
        self.add_argument("overrides", nargs="*", default=[], help=help)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def setup_logging() -> Console:
    """Warnings and the toolkit's info messages on stderr; returns that stderr console."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    # No "Loading weights" bar on every command; transformers reads this state when it is imported, which a
    # command has not done yet; a main() called from Python may come after it. A user's
    # HF_HUB_DISABLE_PROGRESS_BARS wins (hub's rule; asking would only warn).
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is None:
        disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)],
                        format="%(message)s")
    logging.getLogger("toolkit").setLevel(logging.INFO)
    return console


def load_with_overrides(path: str, overrides: list[str]) -> tuple[Recipe, Dataset]:
    recipe = load_recipe(path, overrides)
    return recipe, load_dataset(recipe.data)


def index_command(recipe: str, overrides: list[str]) -> str:
    """The command that builds the index a reader (search, chat) was pointed at: this interpreter (a bare
    `python` may not be the venv's, or exist at all), the same recipe and overrides, quoted for a shell, so that
    pasting it builds that index and not the recipe's default one."""
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):  # `.venv/bin/python`, as the README writes it
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), "-m", "toolkit.index", recipe, *overrides])


def path_arg(value: str) -> str:
    """argparse `type=` for path flags: not empty, and `~` expanded as in recipe paths (the shell leaves the `~`
    of `--out=~/x` alone, and the folder would be a literal `./~`)."""
    return str(Path(non_empty(value)).expanduser())


def folder_arg(value: str) -> Path:
    """argparse `type=` for a folder flag (`--adapter`, `--out`): a file there is refused at once, in the words of
    every command, not after minutes of loading in each reader's own."""
    from toolkit.report import file_in_the_way

    path = Path(path_arg(value))
    file = file_in_the_way(path)
    if file is not None:
        raise argparse.ArgumentTypeError(f"{file} is a file, not a folder")
    return path  # Path("") is ".": an empty --out would write into the current folder


def run_folder(value: str) -> str:
    """argparse `type=` for `--run`: a run folder (a recipe's output_dir) that exists. A file, a missing folder or
    a folder inside a run (its adapter/ or export/) is refused at once, naming the run where there is one; left
    to the readers, each said that its own part was missing and how to build it there."""
    path = Path(path_arg(value))
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; it takes a run folder (the output_dir of toolkit.run)")
    # Two levels down too: a checkpoint (trainer/checkpoint-N) or export/merged.
    inside = (path.parent, path.parent.parent) if path.parent.name in ("trainer", "export") else (path.parent,)
    run = next((p for p in inside if (p / "report.json").is_file()), None)
    if not (path / "report.json").exists() and run is not None:
        raise argparse.ArgumentTypeError(f"{path} is inside a run; did you mean --run {run}?")
    return str(path)


def non_empty(value: str) -> str:
    """argparse `type=` for flags: an empty value is refused, not silently taken as "use the default"."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def fail(console: Console, err: Exception) -> int:
    console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return 2


class EmbeddingProgress:
    """`Index.update`'s progress callback: a rich progress bar on a terminal; elsewhere (logs, pipes) one plain
    line per stored batch."""

    def __init__(self, console):
        self.console, self.bar, self.task = console, None, None

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        if not self.console.is_terminal:
            if done:
                self.console.print(f"stored {done}/{total} chunks", highlight=False)
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("embedding", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
