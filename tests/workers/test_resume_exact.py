"""Resume is exact on CPU: killed mid-run and resumed == never interrupted (max |diff| <= 1e-6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def _trainer(job_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tempotrain_workers.trainer_main", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
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
    assert resume is not None and resume.step == 21

    resumed = interrupted.model_copy(
        update={"resume_from": resume.path, "resumed_from_step": resume.step}
    )
    assert _trainer(_write(resumed, interrupted_file)).wait(timeout=300) == 0

    expected = load_file(Path(straight.run_dir) / "model.safetensors")
    actual = load_file(Path(interrupted.run_dir) / "model.safetensors")
    assert expected.keys() == actual.keys()
    worst = max((expected[k] - actual[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
