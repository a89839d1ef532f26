"""Training curves from a hand-made GRPOTrainer log history: the numbers, the PNG plots and the warnings."""

from __future__ import annotations

import io
import logging
import math

import pytest
from matplotlib.image import imread

from toolkit.curves import render_plots, training_curves, training_warnings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REWARDS = ("answer_match", "format_strict", "context_grounding")


def test_curves_hold_every_step_and_reward(log_history):
    curves = training_curves(log_history(steps=4, rewards=REWARDS))
    assert curves["step"] == [1, 2, 3, 4]  # the end-of-training summary is not a step
    series = curves["series"]
    assert list(series)[:4] == ["reward", *(f"rewards/{name}/mean" for name in REWARDS)]
    assert series["reward"] == pytest.approx([0.2, 0.25, 0.3, 0.35])
    assert series["completions/mean_length"] == [30.0, 29.0, 28.0, 27.0]
    assert "kl" not in series  # beta = 0: TRL logs no KL
    assert "kl" in training_curves(log_history(steps=2, kl=0.01))["series"]
    assert training_curves([]) == {"step": [], "series": {}}


def test_plots_are_real_png_images(log_history):
    images = render_plots(training_curves(log_history(kl=[0.0, 0.01, 0.02, 0.02, 0.03, 0.05])))
    assert set(images) == {"plots/reward.png", "plots/frac_reward_zero_std.png", "plots/kl.png",
                           "plots/completion_length.png", "plots/clipped_ratio.png"}
    for data in images.values():
        assert data.startswith(PNG_MAGIC)
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # something was drawn


@pytest.mark.parametrize("names", [(r"copy $\frac$", "answer_match"), ("cost_$5_$", r"a\$b$c$")])
def test_dollar_signs_in_reward_labels_are_not_mathtext(log_history, names):
    images = render_plots(training_curves(log_history(rewards=names)))
    assert "plots/reward.png" in images
    for data in images.values():
        assert imread(io.BytesIO(data), format="png").std() > 0


def test_no_kl_plot_without_kl(log_history):
    assert "plots/kl.png" not in render_plots(training_curves(log_history()))


def test_healthy_training_has_no_warnings(log_history, caplog):
    with caplog.at_level(logging.WARNING):
        assert training_warnings(training_curves(log_history(zero_std=[1.0, 0.5, 0.25, 0.0, 0.0, 0.0]))) == []
    assert not caplog.records


def test_zero_variance_rewards_warn(log_history, caplog):
    curves = training_curves(log_history(zero_std=[1.0, 1.0, 0.75, 1.0, 0.8, 0.0]))
    with caplog.at_level(logging.WARNING):
        (warning,) = training_warnings(curves)
    assert "zero variance" in warning and "4 of 6 steps" in warning
    assert "training looked broken" in caplog.text  # also on the console


@pytest.mark.parametrize("kl", [[0.01, 0.05, 0.3, 2.5, 8.0, 30.0], [0.01, 0.02, math.nan, 0.02, 0.02, 0.02]])
def test_exploding_kl_warns(log_history, kl):
    (warning,) = training_warnings(training_curves(log_history(kl=kl)))
    assert "KL" in warning and "exploded" in warning


def test_always_truncated_warns(log_history):
    (warning,) = training_warnings(training_curves(log_history(clipped=[1.0, 1.0, 0.96, 1.0, 0.5, 1.0])))
    assert "truncated" in warning and "5 of 6 steps" in warning
    assert training_warnings(training_curves(log_history(clipped=[1.0, 1.0, 0.5, 0.5, 0.5, 0.5]))) == []


def test_a_reward_label_starting_with_an_underscore_is_in_the_legend(log_history, monkeypatch):
    from matplotlib.figure import Figure

    legends, savefig = {}, Figure.savefig

    def record(figure, *args, **kwargs):
        ax = figure.axes[0]
        legends[ax.get_title()] = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    render_plots(training_curves(log_history(rewards=("_short", "answer_match"))))
    # matplotlib drops "_"-prefixed labels from a legend it collects itself: the line was drawn, unnamed
    assert legends["Reward (total and each reward's mean)"] == ["total", "_short", "answer_match"]
