"""Training curves from the trainer's log history: the numbers, PNG plots, and warnings when training looked broken.

TRL's GRPOTrainer logs per step: `reward` (the weighted total), `rewards/<name>/mean` for each reward,
`frac_reward_zero_std` (share of groups whose completions all got the same reward: no learning signal),
`completions/mean_length`, `completions/clipped_ratio` (share cut at max_completion_length) and, only when
beta > 0, `kl`. Plots use matplotlib's object API with the Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

import io
import logging
import math

logger = logging.getLogger(__name__)

STEP_KEYS = ("reward", "frac_reward_zero_std", "kl", "completions/mean_length", "completions/clipped_ratio")

# Warning thresholds. "Most steps" means more than half of the logged steps.
ZERO_STD_LIMIT = 0.8  # a step where ≥ 80% of groups had identical rewards learned (almost) nothing
KL_LIMIT = 1.0  # per-token KL to the reference model; LoRA GRPO runs normally stay well below 0.1
CLIPPED_LIMIT = 0.95  # a step whose completions were (nearly) all cut at max_completion_length


def training_curves(log_history: list[dict]) -> dict:
    """`{"step": [...], "series": {key: [value or None per step]}}` for the per-step training logs."""
    entries = [entry for entry in log_history if "reward" in entry]  # skips the end-of-training summary
    reward_keys = [
        key for key in dict.fromkeys(k for entry in entries for k in entry)
        if key.startswith("rewards/") and key.endswith("/mean")
    ]
    keys = ["reward", *reward_keys, *STEP_KEYS[1:]]
    series = {
        key: [_number(entry.get(key)) for entry in entries]
        for key in keys
        if any(key in entry for entry in entries)
    }
    return {"step": [entry.get("step", i) for i, entry in enumerate(entries, 1)], "series": series}


def _number(value) -> float | None:
    return None if value is None else float(value)


def training_warnings(curves: dict) -> list[str]:
    """Plain-language warnings when the curves say training was broken; each is also logged."""
    series, steps = curves["series"], curves["step"]
    found = []
    zero = [v for v in series.get("frac_reward_zero_std", []) if v is not None]
    flat = sum(v >= ZERO_STD_LIMIT for v in zero)
    if zero and flat > len(zero) / 2:
        found.append(
            f"rewards had zero variance in most groups for {flat} of {len(zero)} steps (frac_reward_zero_std ≥ "
            f"{ZERO_STD_LIMIT}): every completion of a group scored the same, so GRPO had almost nothing to learn "
            "from. Give partial credit (soft format, answer_match partial), add a worked example to the prompt, or "
            "raise training.num_generations or training.temperature."
        )
    kl = [(s, v) for s, v in zip(steps, series.get("kl", []), strict=False) if v is not None]
    bad = [(s, v) for s, v in kl if not math.isfinite(v) or v > KL_LIMIT]
    if bad:
        step, value = max(bad, key=lambda sv: sv[1] if math.isfinite(sv[1]) else math.inf)
        found.append(
            f"KL to the reference model exploded: {value:.3g} at step {step} (warning above {KL_LIMIT}): the policy "
            "ran away from the base model. Lower training.learning_rate or raise training.beta."
        )
    clipped = [v for v in series.get("completions/clipped_ratio", []) if v is not None]
    cut = sum(v >= CLIPPED_LIMIT for v in clipped)
    if clipped and cut > len(clipped) / 2:
        found.append(
            f"completions were (almost) always truncated: clipped_ratio ≥ {CLIPPED_LIMIT} in {cut} of {len(clipped)} "
            "steps, so rewards scored cut-off text. Raise training.max_completion_length or reward shorter replies."
        )
    for message in found:
        logger.warning("training looked broken: %s", message)
    return found


PLOTS = {  # file name → (title, y label, series keys; None = every rewards/<name>/mean)
    "reward.png": ("Reward (total and each reward's mean)", "reward", ["reward", None]),
    "frac_reward_zero_std.png": ("Groups with zero reward variance", "fraction of groups", ["frac_reward_zero_std"]),
    "kl.png": ("KL to the reference model", "KL", ["kl"]),
    "completion_length.png": ("Completion length", "tokens", ["completions/mean_length"]),
    "clipped_ratio.png": ("Completions cut at max_completion_length", "fraction", ["completions/clipped_ratio"]),
}


def render_plots(curves: dict, folder: str = "plots") -> dict[str, bytes]:
    """PNG images of the curves, `{"plots/reward.png": b"\\x89PNG..."}`; a plot whose series were never logged
    (KL with beta = 0) is left out."""
    images = {}
    for name, (title, ylabel, keys) in PLOTS.items():
        lines = _lines(curves["series"], keys)
        if lines:
            images[f"{folder}/{name}"] = _png(curves["step"], lines, title, ylabel)
    return images


def _lines(series: dict, keys: list) -> dict[str, list]:
    lines = {}
    for key in keys:
        chosen = [k for k in series if k.startswith("rewards/") and k.endswith("/mean")] if key is None else [key]
        for k in chosen:
            if k in series and any(v is not None for v in series[k]):
                lines[k] = series[k]
    return lines


def _png(steps: list, lines: dict[str, list], title: str, ylabel: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    marker = "o" if len(steps) <= 20 else None
    drawn, labels = [], []
    for i, (key, values) in enumerate(lines.items()):
        ys = [math.nan if v is None else v for v in values]
        label = key.removeprefix("rewards/").removesuffix("/mean") if key.startswith("rewards/") else key
        label = label.replace("$", r"\$")  # a label with two "$" would be parsed as mathtext and crash the plot
        labels.append("total" if key == "reward" and len(lines) > 1 else label)
        drawn += ax.plot(steps, ys, marker=marker, markersize=3, linewidth=2.2 if i == 0 and len(lines) > 1 else 1.4)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        # Labels passed explicitly: matplotlib leaves a line labelled "_len" (a reward label) out of its own legend.
        ax.legend(drawn, labels, fontsize="small", loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
