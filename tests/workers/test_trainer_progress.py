"""The trainer's progress.json: written at the logging cadence, on every save and at the end,
never once per step (on a network filesystem each rewrite costs several round trips)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tempotrain_workers import trainer_main
from tempotrain_workers.api import BertFineTuneConfig, DatasetSchema
from tempotrain_workers.trainer_main import PROGRESS_EVERY_SECONDS, TrainerJob, build_callback


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step, max_steps=100, epoch=step / 50, is_world_process_zero=True
    )


def _progress(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "progress.json").read_text()))


def test_progress_is_written_at_the_logging_cadence_on_save_and_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    monkeypatch.setattr(trainer_main, "time", clock)
    schema = DatasetSchema(text_field="text", label_field="label", num_labels=2)
    job = TrainerJob(
        config=BertFineTuneConfig(),
        run_dir=str(tmp_path),
        snapshot_dir=str(tmp_path),
        snapshot_hash="h",
        schema_=schema,
    )
    callback = build_callback(job)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    writes: list[int] = []

    def step(number: int, seconds: float) -> None:
        clock.now += seconds
        before = (tmp_path / "progress.json").stat().st_ino if writes else None
        callback.on_step_end(None, _state(number), control)
        after = (tmp_path / "progress.json").stat().st_ino
        if after != before:  # an atomic rewrite is a new inode
            writes.append(number)

    for number in range(1, 41):  # 40 steps of 0.1 s: 4 s of training
        step(number, 0.1)
    assert PROGRESS_EVERY_SECONDS == 2.0
    assert writes == [1, 21], writes  # the first step, then once per 2 s
    assert _progress(tmp_path)["step"] == 21

    checkpoint = tmp_path / "checkpoint-40"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    callback.on_save(None, _state(40), control)
    assert _progress(tmp_path)["step"] == 40  # the step the new checkpoint holds

    clock.now += 0.1
    callback.on_step_end(None, _state(41), control)
    assert _progress(tmp_path)["step"] == 40
    callback.on_train_end(None, _state(41), control)
    assert _progress(tmp_path) == {"step": 41, "total_steps": 100, "epoch": 0.82, "loss": None}
    events = [
        json.loads(line.removeprefix(trainer_main.EVENT_PREFIX))
        for line in capsys.readouterr().out.splitlines()
    ]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 21, 40, 41]
