"""Training and evaluation curves as a PNG: one figure, one line per run (a sweep's trials)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tempotrain_workers.history import HistoryRecord

EVAL_METRICS = ("eval_accuracy", "eval_loss")


def figure(runs: Mapping[str, Sequence[HistoryRecord]], title: str) -> Any:
    """Left: training loss per logging step; right: each evaluation's accuracy (or loss,
    when accuracy was not measured), per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    metric = next(
        (
            m
            for m in EVAL_METRICS
            if any(getattr(r, m) is not None for rs in runs.values() for r in rs)
        ),
        EVAL_METRICS[0],
    )
    for label, records in runs.items():
        training = [(r.step, r.loss) for r in records if r.loss is not None]
        if training:
            train_ax.plot(*zip(*training, strict=True), label=label, linewidth=1.4)
        evaluations = [
            (r.step, getattr(r, metric)) for r in records if getattr(r, metric) is not None
        ]
        if evaluations:
            eval_ax.plot(*zip(*evaluations, strict=True), marker="o", label=label)
    train_ax.set(title="training loss", xlabel="step", ylabel="loss")
    eval_ax.set(title=metric.replace("_", " "), xlabel="step", ylabel=metric.removeprefix("eval_"))
    for ax in (train_ax, eval_ax):
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def save(runs: Mapping[str, Sequence[HistoryRecord]], title: str, target: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = figure(runs, title)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
