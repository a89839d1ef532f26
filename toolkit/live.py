"""Live training metrics: one table row per logging step, and a warning when GRPO has nothing to learn from.

Each row shows the step, the weighted total reward, each reward's mean (TRL logs `rewards/<name>/mean`), the share
of groups whose completions all scored the same (`frac_reward_zero_std`), the KL to the reference model (only
logged when beta > 0), the mean completion length, the share of completions cut at max_completion_length and the
wall-clock seconds per step. Rows are printed, not redrawn in place, so a CI log or a file keeps every step; in a
terminal a progress bar with the remaining time sits below them.

When most groups have zero reward variance for several steps in a row, every advantage is zero and the update
does (almost) nothing; that is logged as a warning at once, not discovered in the report an hour later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# A step where ≥ 75% of groups scored all their completions alike gave GRPO (almost) no signal; three such steps in
# a row is a pattern, not bad luck with one question.
ZERO_STD_LIMIT = 0.75
ZERO_STD_STEPS = 3
# The widest text `_cell` writes for a column (6 by default, e.g. "-0.25"): a KL such as "0.000123" or "-1.23e+03"
# and a total reward such as "-12.500" were cut to "0.000…" and "-12.5…" in 6. A longer reward label than
# LABEL_WIDTH folds over header lines instead of widening its column further.
VALUE_WIDTHS = {"reward": 8, "kl": 9}
LABEL_WIDTH = 20
UNLIMITED = 10_000  # a width no table row reaches: measured at it, a table takes what its columns need


def live_console() -> Console:
    """stderr, like the logs, so stdout keeps only results; 160 columns when not a terminal (rich would use 80
    there and squeeze a row of reward columns into wraps)."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=160)


def zero_std_message(steps: list[int], limit: float = ZERO_STD_LIMIT) -> str:
    return (
        f"rewards had zero variance in ≥ {limit:.0%} of groups for {len(steps)} steps in a row (steps {steps[0]}–"
        f"{steps[-1]}): every completion of a question scored the same, so GRPO's advantages are zero and the model "
        "learns nothing. Add a worked example of the wanted reply to the prompt (prompt.examples), sample more "
        "completions per question (training.num_generations) or more diverse ones (training.temperature), or give "
        "partial credit (answer_match partial, format soft)."
    )


class LiveMetrics(TrainerCallback):
    """Prints a row of metrics per training log, and warns on a streak of zero-variance reward groups.

    `clock` is injectable so tests can feed log dicts with known step times.
    """

    def __init__(
        self,
        console: Console | None = None,
        zero_std_limit: float = ZERO_STD_LIMIT,
        zero_std_steps: int = ZERO_STD_STEPS,
        clock: Callable[[], float] = time.perf_counter,
        progress_bar: bool | None = None,
    ):
        self.console = console or live_console()
        self.zero_std_limit, self.zero_std_steps = zero_std_limit, zero_std_steps
        self.clock = clock
        # A bar redrawn in place only makes sense on a terminal; in a log it would print once, at the end.
        use_bar = self.console.is_terminal if progress_bar is None else progress_bar
        self.progress = Progress(
            TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True,
        ) if use_bar else None
        self.task = None
        self.columns: list[tuple[str, str, int]] | None = None  # (header, log key, width), fixed by the first log
        self.rows: list[dict] = []  # every printed row, as numbers: for tests and for callers that want them
        self.warnings: list[str] = []
        self._streak: list[int] = []
        self._last_time: float | None = None
        self._last_step = 0

    # Trainer events -------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_step = self.clock(), state.global_step  # a resumed run starts mid-way
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("GRPO", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:  # skips the end-of-training summary (train_runtime, train_loss)
            self.record(state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the progress bar; safe to call twice (training that raised never reaches on_train_end)."""
        if self.progress is not None:
            self.progress.stop()

    # The work, callable without a trainer ---------------------------------------------------------------------

    def record(self, step: int, logs: dict) -> dict:
        """Print the row for one training log and update the zero-variance streak; returns the row."""
        now = self.clock()
        seconds = None
        if self._last_time is not None and step > self._last_step:
            seconds = (now - self._last_time) / (step - self._last_step)
        self._last_time, self._last_step = now, step
        row = {"step": step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}, "step_seconds": seconds}
        if self.columns is None:
            self.columns = self._columns(logs)
            self._print(row, header=True)
        else:
            self._print(row, header=False)
        self.rows.append(row)
        self._check_zero_std(step, logs.get("frac_reward_zero_std"))
        return row

    def _columns(self, logs: dict) -> list[tuple[str, str, int]]:
        rewards = [k for k in logs if k.startswith("rewards/") and k.endswith("/mean")]
        columns = [("step", "step"), ("reward", "reward")]
        columns += [(k.removeprefix("rewards/").removesuffix("/mean"), k) for k in rewards]
        columns += [("zero-std", "frac_reward_zero_std")]
        if "kl" in logs:  # TRL logs KL only when beta > 0 (there is no reference model otherwise)
            columns += [("kl", "kl")]
        columns += [("len", "completions/mean_length"), ("clipped", "completions/clipped_ratio"),
                    ("s/step", "step_seconds")]
        return [(header, key, max(VALUE_WIDTHS.get(key, 6), min(len(header), LABEL_WIDTH))) for header, key in columns]

    def _print(self, row: dict, header: bool) -> None:
        # One small table per row with fixed column widths: rows printed separately still line up, and each is
        # final the moment it is printed (nothing to redraw in a log file). The table's own width is all its
        # columns need: on a narrower terminal rich squeezed every column to "…"; now the terminal wraps the line.
        table = Table(box=box.SIMPLE_HEAD, show_header=header, show_edge=False, pad_edge=False, header_style="bold")
        for title, _, width in self.columns:
            # A reward label is no markup: "len[/short]" would raise in the first log, "[x]" would vanish.
            table.add_column(escape(title), justify="right", width=width, overflow="fold")
        table.add_row(*(self._cell(key, row.get(key)) for _, key, _ in self.columns))
        table.width = Measurement.get(self.console, self.console.options.update_width(UNLIMITED), table).maximum
        self.console.print(table, highlight=False, crop=False)

    def _cell(self, key: str, value) -> str:
        if value is None:
            return "–"
        if key == "step":
            return str(int(value))
        if key == "completions/mean_length":
            return f"{value:.0f}"
        if key == "step_seconds":
            return f"{value:.1f}"
        if key == "kl":
            return f"{value:.3g}"
        if key == "frac_reward_zero_std" and value >= self.zero_std_limit:
            return f"[yellow]{value:.2f}[/]"
        return f"{value:.3f}" if key == "reward" else f"{value:.2f}"

    def _check_zero_std(self, step: int, value) -> None:
        if value is None or value < self.zero_std_limit:
            self._streak = []
            return
        self._streak.append(step)
        if len(self._streak) == self.zero_std_steps:  # once per streak: a long flat run should not flood the log
            message = zero_std_message(self._streak, self.zero_std_limit)
            self.warnings.append(message)
            logger.warning("%s", message)
