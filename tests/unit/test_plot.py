"""`tempotrain plot`: the PNG holds the curves, one line per trial, with labelled axes."""

from __future__ import annotations

import math
from pathlib import Path

from tempotrain_client import plot
from tempotrain_workers.history import HistoryRecord


def sweep_history(trials: int) -> dict[str, list[HistoryRecord]]:
    runs = {}
    for t in range(trials):
        records = [
            HistoryRecord(step=s, loss=math.exp(-s / (20 + 10 * t)), learning_rate=1e-4)
            for s in range(5, 101, 5)
        ]
        records += [HistoryRecord(step=s, eval_accuracy=0.5 + s / 400 + t / 50) for s in (50, 100)]
        runs[f"t{t:02d}"] = records
    return runs


def test_the_figure_has_one_line_per_trial_and_labelled_axes() -> None:
    fig = plot.figure(sweep_history(4), "sweep")
    train_ax, eval_ax = fig.axes
    assert [line.get_label() for line in train_ax.get_lines()] == ["t00", "t01", "t02", "t03"]
    assert len(eval_ax.get_lines()) == 4
    assert (train_ax.get_xlabel(), train_ax.get_ylabel()) == ("step", "loss")
    assert (eval_ax.get_xlabel(), eval_ax.get_ylabel()) == ("step", "accuracy")
    first = train_ax.get_lines()[0]
    assert list(first.get_xdata())[:2] == [5, 10]  # the records' steps, in order


def test_the_png_is_not_blank(tmp_path: Path) -> None:
    import matplotlib.image

    target = plot.save(sweep_history(3), "sweep", tmp_path / "sweep.png")
    pixels = matplotlib.image.imread(target)
    height, width = pixels.shape[:2]
    assert width > 800 and height > 300
    # Drawn curves: many distinct colours, far from a white page with a frame.
    colours = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7].round(2).tolist()}
    assert len(colours) > 50, len(colours)
    assert pixels[..., :3].mean() < 0.99


def test_a_single_run_without_evaluation_still_draws_its_loss() -> None:
    runs = {"exp": [HistoryRecord(step=s, loss=1 / s) for s in range(1, 10)]}
    fig = plot.figure(runs, "exp")
    assert len(fig.axes[0].get_lines()) == 1 and not fig.axes[1].get_lines()
