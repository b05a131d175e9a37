"""A run's training history on the runs volume: `<run>/history.jsonl`, one record per
Trainer log (loss, learning rate, grad norm per logging step; eval metrics per evaluation).

Written by the trainer as it goes (appends, rank 0 only), read by the `tempotrain` client for
curves and plots. A resumed attempt first drops what the lost attempt logged after the
checkpoint it resumes from: those steps are trained again, and the file never holds a step
twice. TensorBoard event files go beside it (`<run>/tensorboard/`), trimmed the same way
(TensorBoard's purge step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tempotrain_workers.files import staging_path

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"


class HistoryRecord(BaseModel):
    """One Trainer log. Training logs have `loss`, evaluations `eval_*`; other keys the
    Trainer adds (train_runtime, ...) are kept as extras."""

    model_config = ConfigDict(extra="allow", frozen=True)

    step: int
    epoch: float | None = None
    time: float | None = None  # seconds since the epoch, when it was logged
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None

    @property
    def is_evaluation(self) -> bool:
        return self.eval_loss is not None or self.eval_accuracy is not None


def history_file(run_id: str) -> str:
    """A run's history, relative to the runs volume (as `.status.historyFile` gives it)."""
    return f"{run_id}/{HISTORY_FILE}"


def read(path: Path) -> list[HistoryRecord]:
    """The records in order; a line torn by a crash mid-write (the last) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(HistoryRecord.model_validate_json(line))
        except ValueError:
            continue
    return records


def trim(path: Path, through_step: int | None) -> None:
    """Keep only the records up to and including `through_step` (None: none), in place and
    atomically: what an attempt that resumes from that step will log again goes."""
    if not path.exists():
        return
    kept = [r for r in read(path) if through_step is not None and r.step <= through_step]
    staging = staging_path(path)
    try:
        staging.write_text("".join(_line(r.model_dump(exclude_none=True)) for r in kept))
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)


def append(path: Path, record: dict[str, Any]) -> None:
    """One record, flushed: a reader (or the next attempt) sees whole lines only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(_line(record))
        handle.flush()


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=float) + "\n"
