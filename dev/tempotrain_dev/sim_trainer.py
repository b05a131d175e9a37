"""A trainer process that simulates a long run in seconds, for history and recovery checks.

It speaks the real trainer's protocol (`trainer_main`: a TrainerJob file in, `@tempotrain`
events out, result.json, exit codes), so the real supervising activity and workflow run
unchanged around it. Each tick is `--tick-seconds` of simulated training: one progress
event, as the real trainer reports every 2 s. Checkpoints are real and verified (a small
file plus its marker), so a resume after a crash or a continue-as-new finds them.

    python -m tempotrain_dev.sim_trainer JOB --ticks N [--checkpoint-every K] [--crash-at T ...]
        [--fail-from T]

`--crash-at T`: the first attempt to reach tick T crashes there (once per T, like a
preemption). `--fail-from T`: every attempt that reaches T crashes (a bug that no retry fixes).
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
from pathlib import Path

from tempotrain_workers.api import BertFineTuneResult
from tempotrain_workers.checkpoints import checkpoint_dirs, write_marker
from tempotrain_workers.files import write_json_atomically
from tempotrain_workers.trainer_main import EXIT_STOPPED, TrainerJob, emit

KEEP_CHECKPOINTS = 3
EXIT_CRASHED = 70  # EX_SOFTWARE: a simulated crash (OOM, a driver fault)


def save(job: TrainerJob, step: int, epoch: float, loss: float) -> dict[str, object]:
    checkpoint = Path(job.run_dir) / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "state.txt").write_text(f"step {step}\n")
    info = write_marker(
        checkpoint, step=step, epoch=epoch, loss=loss, snapshot_hash=job.snapshot_hash
    )
    for old in checkpoint_dirs(Path(job.run_dir))[KEEP_CHECKPOINTS:]:  # newest first
        shutil.rmtree(old, ignore_errors=True)
    return info.model_dump(mode="json")


def crashes_here(run_dir: Path, step: int, crash_at: set[int], fail_from: int | None) -> bool:
    if fail_from is not None and step >= fail_from:
        return True
    if step not in crash_at:
        return False
    seen = run_dir / f".sim-crashed-at-{step}"
    if seen.exists():
        return False
    seen.touch()
    return True


def run(
    job: TrainerJob,
    ticks: int,
    checkpoint_every: int | None,
    crash_at: set[int],
    fail_from: int | None = None,
) -> int:
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    start = job.resumed_from_step or 0
    checkpoints = 0
    latest: dict[str, object] | None = None
    for step in range(start + 1, ticks + 1):
        epoch = step / ticks
        loss = 1.0 / math.sqrt(step)
        emit("progress", step=step, total_steps=ticks, epoch=epoch, loss=loss)
        if crashes_here(Path(job.run_dir), step, crash_at, fail_from):
            return EXIT_CRASHED
        if stop_requested or (checkpoint_every and step % checkpoint_every == 0):
            latest = save(job, step, epoch, loss)
            checkpoints += 1
            emit("checkpoint", checkpoint=latest, total_steps=ticks)
        if stop_requested:
            emit("stopped", step=step)
            return EXIT_STOPPED
    result = BertFineTuneResult(
        run_id=job.config.run_id or "",
        model_path=job.run_dir,
        snapshot_id=Path(job.snapshot_dir).name,
        snapshot_hash=job.snapshot_hash,
        schema=job.schema_,
        global_step=ticks,
        total_steps=ticks,
        train_loss=1.0 / math.sqrt(ticks),
        losses=[],
        eval_loss=None,
        eval_accuracy=None,
        checkpoints_saved=checkpoints,
        latest_checkpoint=None,
        resumed_from_step=job.resumed_from_step,
        device="simulated",
        train_seconds=0.0,
    )
    write_json_atomically(
        Path(job.run_dir) / "result.json", result.model_dump(mode="json", by_alias=True)
    )
    emit("finished", step=ticks)
    return 0


class CommandFactory:
    """The trainer command a TrainerSupervisor runs: this simulator instead of the trainer."""

    def __init__(
        self,
        ticks: int,
        checkpoint_every: int | None = None,
        crash_at: tuple[int, ...] = (),
        fail_from: int | None = None,
    ) -> None:
        self.args = [f"--ticks={ticks}"]
        if checkpoint_every:
            self.args.append(f"--checkpoint-every={checkpoint_every}")
        self.args += [f"--crash-at={t}" for t in crash_at]
        if fail_from is not None:
            self.args.append(f"--fail-from={fail_from}")

    def __call__(self, job_file: Path) -> list[str]:
        return [sys.executable, "-m", "tempotrain_dev.sim_trainer", str(job_file), *self.args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", type=Path)
    parser.add_argument("--ticks", type=int, required=True)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--crash-at", type=int, action="append", default=[])
    parser.add_argument("--fail-from", type=int)
    args = parser.parse_args(argv)
    job = TrainerJob.model_validate_json(args.job.read_text())
    return run(job, args.ticks, args.checkpoint_every, set(args.crash_at), args.fail_from)


if __name__ == "__main__":
    sys.exit(main())
