"""Resume is exact on CPU: killed mid-run and resumed == never interrupted (max |diff| <= 1e-6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tempotrain_workers.api import BertFineTuneConfig
from tempotrain_workers.checkpoints import latest_verified
from tempotrain_workers.snapshots import create_snapshot
from tempotrain_workers.trainer_main import EVENT_PREFIX, TrainerJob


def _job(tiny_bert: Path, data: Path, root: Path, run_id: str) -> tuple[TrainerJob, Path]:
    config = BertFineTuneConfig(
        run_id=run_id,
        model_name=str(tiny_bert),
        dataset_name=str(data),
        dataset_config=None,
        num_epochs=2,
        batch_size=8,
        learning_rate=1e-3,
        max_seq_length=32,
        save_steps=7,
    )
    snapshot = create_snapshot(config.snapshot_request(), root / "snapshots")
    job = TrainerJob(
        config=config,
        run_dir=str(root / "runs" / run_id),
        snapshot_dir=snapshot.path,
        snapshot_hash=snapshot.snapshot_hash,
        schema_=snapshot.schema_,
    )
    return job, _write(job, root / f"{run_id}.json")


def _write(job: TrainerJob, path: Path) -> Path:
    path.write_text(job.model_dump_json())
    return path


def _trainer(job_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tempotrain_workers.trainer_main", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_killed_and_resumed_run_ends_with_identical_weights(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    straight, straight_file = _job(tiny_bert, sentiment_file, tmp_path, "straight")
    assert _trainer(straight_file).wait(timeout=300) == 0

    interrupted, interrupted_file = _job(tiny_bert, sentiment_file, tmp_path, "interrupted")
    process = _trainer(interrupted_file)
    assert process.stdout is not None
    for line in process.stdout:  # SIGKILL right after the 3rd checkpoint, mid-epoch
        if line.startswith(EVENT_PREFIX) and '"checkpoint"' in line and '"step": 21,' in line:
            process.kill()
            break
    process.wait(timeout=60)
    assert process.returncode != 0, "the run finished before it could be interrupted"
    resume = latest_verified(Path(interrupted.run_dir), interrupted.snapshot_hash)
    # Saves are written in the background: the next one (step 28) may have landed too.
    assert resume is not None and resume.step in (21, 28)

    resumed = interrupted.model_copy(
        update={"resume_from": resume.path, "resumed_from_step": resume.step}
    )
    assert _trainer(_write(resumed, interrupted_file)).wait(timeout=300) == 0

    expected = load_file(Path(straight.run_dir) / "model.safetensors")
    actual = load_file(Path(interrupted.run_dir) / "model.safetensors")
    assert expected.keys() == actual.keys()
    worst = max((expected[k] - actual[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"


def test_background_saves_hold_the_state_of_their_step(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written while training went on (each write held back until the loop is 3
    steps further) holds exactly what a synchronous save at its step holds: weights and
    optimizer moments, bit for bit; the same files, markers and rotation."""
    import torch
    from safetensors.torch import load_file
    from tempotrain_workers import trainer_main
    from tempotrain_workers.async_checkpoints import AsyncCheckpointTrainer, CheckpointWrite
    from tempotrain_workers.checkpoints import checkpoint_dirs, verify

    write = AsyncCheckpointTrainer._write
    ahead: list[int] = []

    def late_write(trainer: AsyncCheckpointTrainer, save: CheckpointWrite) -> None:
        target = min(save.step + 3, trainer.state.max_steps)
        deadline = time.monotonic() + 60
        while trainer.state.global_step < target and time.monotonic() < deadline:
            time.sleep(0.005)
        ahead.append(trainer.state.global_step - save.step)
        write(trainer, save)

    monkeypatch.setattr(AsyncCheckpointTrainer, "_write", late_write)
    background, _ = _job(tiny_bert, sentiment_file, tmp_path, "background")
    synchronous, _ = _job(tiny_bert, sentiment_file, tmp_path, "synchronous")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert trainer_main.run(background) == 0
        assert max(ahead) >= 3, "no write happened while training went on"
        monkeypatch.setenv("TEMPOTRAIN_SYNC_CHECKPOINTS", "1")
        assert trainer_main.run(synchronous) == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)

    kept = checkpoint_dirs(Path(background.run_dir))
    assert [p.name for p in kept] == [p.name for p in checkpoint_dirs(Path(synchronous.run_dir))]
    assert len(kept) == 3  # save_total_limit, rotated only after each new marker
    for directory in kept:
        twin = Path(synchronous.run_dir) / directory.name
        assert verify(directory, background.snapshot_hash) is not None
        assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in twin.iterdir())
        weights = load_file(directory / "model.safetensors")
        twin_weights = load_file(twin / "model.safetensors")
        assert weights.keys() == twin_weights.keys()
        assert all(torch.equal(weights[k], twin_weights[k]) for k in twin_weights), directory
        optimizer = torch.load(directory / "optimizer.pt", weights_only=True)
        twin_optimizer = torch.load(twin / "optimizer.pt", weights_only=True)
        for key, moments in twin_optimizer["state"].items():
            for name, value in moments.items():
                assert torch.equal(optimizer["state"][key][name], value), (directory, key, name)
