"""The live metrics callback, fed the log dicts TRL's GRPOTrainer emits (no model, no trainer)."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console
from transformers import TrainerControl, TrainerState

from toolkit.live import LiveMetrics

REWARDS = ("answer_match", "format_strict")


def _callback(times=None):
    """A callback printing to a string (not a terminal, like a CI log) with a clock that returns `times` in turn."""
    out = io.StringIO()
    clock = iter(times or [float(i) for i in range(100)]).__next__
    return LiveMetrics(console=Console(file=out, width=160), clock=clock), out


def _run(callback, history, start_step=0, max_steps=None):
    """Replays a log history through the trainer events, as a training loop would."""
    state = TrainerState(global_step=start_step, max_steps=max_steps or len(history))
    control = TrainerControl()
    callback.on_train_begin(None, state, control)
    for entry in history:
        state.global_step = entry["step"]
        callback.on_step_end(None, state, control)
        callback.on_log(None, state, control, logs={k: v for k, v in entry.items() if k != "step"})
    callback.on_train_end(None, state, control)


def test_one_row_per_step_with_each_reward(log_history):
    callback, out = _callback(times=[0.0, 10.0, 22.0, 36.0])
    _run(callback, log_history(steps=3, rewards=REWARDS))
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    assert header == ["step", "reward", "answer_match", "format_strict", "zero-std", "len", "clipped", "s/step"]
    assert text.count("answer_match") == 1  # the header is printed once, not per row
    rows = [line.split() for line in lines if line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]  # the end-of-training summary is not a row
    assert rows[1] == ["2", "0.250", "0.10", "0.05", "0.00", "29", "0.25", "12.0"]
    assert [row["step_seconds"] for row in callback.rows] == [10.0, 12.0, 14.0]
    assert callback.progress is None  # not a terminal: rows only, no bar redrawn in place


def test_kl_column_only_when_logged(log_history):
    callback, out = _callback()
    _run(callback, log_history(steps=2, kl=0.0123))
    assert "kl" in out.getvalue().split() and "0.0123" in out.getvalue()
    callback, out = _callback()
    _run(callback, log_history(steps=2))  # beta = 0: TRL logs no kl
    assert "kl" not in out.getvalue().split()


def test_rows_stay_aligned(log_history):
    callback, out = _callback()
    rewards = ("answer_match", "context_grounding", "length")
    _run(callback, log_history(steps=4, rewards=rewards, kl=[0.001, 12.5, 3e-5, 1.0]))
    lines = [line for line in out.getvalue().splitlines() if line.strip() and not set(line) <= {"─", " "}]
    assert len({len(line.rstrip()) for line in lines}) == 1, lines


def test_resumed_run_times_from_the_checkpoint_step(log_history):
    callback, _ = _callback(times=[100.0, 130.0, 145.0])
    history = log_history(steps=4)[2:4]  # steps 3 and 4, after resuming from checkpoint-2
    _run(callback, history, start_step=2, max_steps=4)
    assert [row["step"] for row in callback.rows] == [3, 4]
    assert [row["step_seconds"] for row in callback.rows] == [30.0, 15.0]


def test_step_seconds_per_step_when_logging_every_few_steps():
    callback, _ = _callback(times=[0.0, 30.0])
    state = TrainerState(global_step=0, max_steps=3)
    callback.on_train_begin(None, state, TrainerControl())
    state.global_step = 3
    callback.on_log(None, state, TrainerControl(), logs={"reward": 0.5, "frac_reward_zero_std": 0.0})
    assert callback.rows[0]["step_seconds"] == 10.0


def test_warns_once_after_a_streak_of_zero_variance(log_history, caplog):
    callback, _ = _callback()
    with caplog.at_level(logging.WARNING, logger="toolkit.live"):
        _run(callback, log_history(steps=8, zero_std=[0.0, 0.75, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]))
    assert len(callback.warnings) == 1  # steps 2–3 are too short a streak; 5–7 warns; 8 continues it
    message = callback.warnings[0]
    assert "steps 5–7" in message and "3 steps in a row" in message and "learns nothing" in message
    for advice in ("prompt.examples", "training.num_generations", "training.temperature"):
        assert advice in message
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [message]


def test_warns_again_on_a_later_streak(log_history):
    callback, _ = _callback()
    _run(callback, log_history(steps=7, zero_std=[1.0, 1.0, 1.0, 0.0, 0.9, 0.8, 0.76]))
    assert len(callback.warnings) == 2 and "steps 1–3" in callback.warnings[0] and "steps 5–7" in callback.warnings[1]


@pytest.mark.parametrize("zero_std", [0.0, 0.74, [1.0, 0.0] * 3])
def test_no_warning_while_groups_differ(log_history, zero_std):
    callback, _ = _callback()
    _run(callback, log_history(steps=6, zero_std=zero_std))
    assert callback.warnings == []


def test_missing_values_show_as_a_dash():
    callback, out = _callback()
    _run(callback, [{"step": 1, "reward": 0.1}])
    row = [line for line in out.getvalue().splitlines() if line.strip().startswith("1")][0]
    assert row.split()[:2] == ["1", "0.100"] and "–" in row
    assert callback.warnings == []


def test_progress_bar_on_a_terminal(log_history):
    out = io.StringIO()
    callback = LiveMetrics(console=Console(file=out, force_terminal=True, width=160))
    assert callback.progress is not None
    _run(callback, log_history(steps=2))
    assert not callback.progress.live.is_started  # stopped at the end of training
    callback.close()  # and closing twice (after an exception, say) is harmless


def test_a_reward_label_is_not_markup():
    callback, out = _callback()  # "[/exact]" raised MarkupError at the first log, "[v2]" vanished as a tag
    _run(callback, [{"step": 1, "reward": 0.1, "rewards/match[/exact]/mean": 0.5, "rewards/[v2]/mean": 0.25}])
    header = out.getvalue().splitlines()[0]
    assert "match[/exact]" in header and "[v2]" in header


@pytest.mark.parametrize("width", [80, 160])
def test_no_number_is_cut_however_narrow_the_terminal_or_long_the_labels(width):
    # The KL column was 6 wide: LoRA's usual 0.000123 showed as "0.000…" and an exploding 1234.5 as "1.23e…"; a
    # total reward of -12.35 as "-12.3…". On an 80-column terminal the wine recipe's 6 rewards squeezed every
    # column, step and reward included, to "…".
    out = io.StringIO()
    callback = LiveMetrics(console=Console(file=out, width=width), progress_bar=False)
    labels = ("answer_match", "format_strict", "format_soft", "context_grounding", "length", "no_example_copy",
              "a_reward_label_far_longer_than_any_number_in_its_column")
    for step, kl in ((10, 0.000123), (20, -1234.5)):
        callback.record(step, {"reward": -12.3456, **{f"rewards/{label}/mean": 0.5 for label in labels},
                               "frac_reward_zero_std": 0.25, "kl": kl, "completions/mean_length": 31.0,
                               "completions/clipped_ratio": 0.1})
    text = out.getvalue()
    assert "…" not in text
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0] in ("10", "20")]
    assert [row[:2] for row in rows] == [["10", "-12.346"], ["20", "-12.346"]]
    assert [row[-5:] for row in rows] == [["0.25", "0.000123", "31", "0.10", "–"],
                                          ["0.25", "-1.23e+03", "31", "0.10", "0.0"]]
