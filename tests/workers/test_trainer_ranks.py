"""Two trainer ranks under torchrun (gloo, CPU), as on a multi-GPU node: a SIGTERM that
reaches one rank stops both at the same step with one complete checkpoint, and a rank's
error type travels by the event stream, since torchrun rewrites the exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tempotrain_workers.api import BertFineTuneConfig, ErrorType
from tempotrain_workers.checkpoints import checkpoint_dirs, latest_verified
from tempotrain_workers.snapshots import create_snapshot
from tempotrain_workers.trainer_main import EVENT_PREFIX, EXIT_BAD_INPUT, TrainerJob


def _torchrun(job: TrainerJob, job_file: Path) -> subprocess.Popen[str]:
    job_file.write_text(job.model_dump_json())
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tempotrain_workers.trainer_main",
            str(job_file),
        ],
        stdout=subprocess.PIPE,
        stderr=(job_file.parent / "torchrun.log").open("w"),
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
    )


def _job(tiny_bert: Path, data: Path, root: Path, **overrides: object) -> TrainerJob:
    config = BertFineTuneConfig(
        run_id="ranks",
        model_name=str(tiny_bert),
        dataset_name=str(data),
        dataset_config=None,
        num_epochs=20,
        batch_size=8,
        max_seq_length=32,
        save_steps=10_000,  # no checkpoint but the one the stop saves
        **overrides,  # type: ignore[arg-type]
    )
    snapshot = create_snapshot(config.snapshot_request(), root / "snapshots")
    return TrainerJob(
        config=config,
        run_dir=str(root / "runs" / "ranks"),
        snapshot_dir=snapshot.path,
        snapshot_hash=snapshot.snapshot_hash,
        schema_=snapshot.schema_,
    )


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with LOCAL_RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"LOCAL_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_sigterm_to_one_rank_stops_both_at_one_step_with_one_checkpoint(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    job = _job(tiny_bert, sentiment_file, tmp_path)
    process = _torchrun(job, tmp_path / "job.json")
    assert process.stdout is not None
    stopped: list[int] = []  # rank 0 speaks for the job
    signalled_at: int | None = None
    for line in process.stdout:
        if not line.startswith(EVENT_PREFIX):
            continue
        event = json.loads(line[len(EVENT_PREFIX) :])
        if event["event"] == "progress" and event["step"] >= 3 and signalled_at is None:
            rank_one = _rank_pid(process.pid, 1)
            assert rank_one is not None, "no LOCAL_RANK=1 worker under torchrun"
            os.kill(rank_one, signal.SIGTERM)  # rank 1 only: rank 0 never sees a signal
            signalled_at = event["step"]
        elif event["event"] == "stopped":
            stopped.append(event["step"])
    returncode = process.wait(timeout=120)

    assert signalled_at is not None, "training ended before the signal"
    # Rank 0, never signalled, stopped within a step or two, with rank 1; both exited 0
    # after their save (torchrun SIGTERMs the other ranks as soon as one exits non-zero).
    assert len(stopped) == 1 and stopped[0] - signalled_at <= 2, (signalled_at, stopped)
    assert returncode == 0, (tmp_path / "torchrun.log").read_text()[-2000:]
    saved = checkpoint_dirs(Path(job.run_dir))
    assert len(saved) == 1, saved  # one complete checkpoint, at the agreed step
    verified = latest_verified(Path(job.run_dir), job.snapshot_hash)
    assert verified is not None and verified.step == stopped[0]


def test_a_rank_error_keeps_its_type_in_the_event_stream(
    sentiment_file: Path, tmp_path: Path, tiny_bert: Path
) -> None:
    job = _job(tiny_bert, sentiment_file, tmp_path)
    missing = job.config.model_copy(update={"model_name": str(tmp_path / "no-such-model")})
    process = _torchrun(job.model_copy(update={"config": missing}), tmp_path / "job.json")
    out, _ = process.communicate(timeout=120)
    errors = [
        json.loads(line[len(EVENT_PREFIX) :])
        for line in out.splitlines()
        if line.startswith(EVENT_PREFIX) and '"error"' in line
    ]
    assert errors and {e["type"] for e in errors} == {str(ErrorType.MODEL_NOT_FOUND)}
    assert process.returncode not in (0, EXIT_BAD_INPUT), process.returncode
