"""`fine_tune_bert`: supervises the trainer process, heartbeats, relays checkpoints.

Resume point: the newest checkpoint in the run directory whose marker verifies and whose
snapshot hash matches. The workflow's `resume_from` is only a hint; the directory is the truth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tempotrain_workers.api import (
    EVALUATION_SIGNAL,
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    CheckpointInfo,
    ErrorType,
    Evaluation,
    Progress,
    TrainingHeartbeat,
)
from tempotrain_workers.checkpoints import latest_verified
from tempotrain_workers.errors import non_retryable
from tempotrain_workers.heartbeats import HEARTBEAT_SECONDS
from tempotrain_workers.metrics import TrainingMeter
from tempotrain_workers.ml_imports import ml_stack_ready
from tempotrain_workers.model_names import resolve_model
from tempotrain_workers.step_rate import StepRate
from tempotrain_workers.subprocesses import die_with_parent
from tempotrain_workers.trainer_main import EVENT_PREFIX, EXIT_STOPPED, TrainerJob, reached_step

log = logging.getLogger(__name__)
GRACEFUL_STOP_SECONDS = 120
# Error types of an attempt that ended badly but may be retried; the workflow reads the
# attempt's TrainingHeartbeat from the error's details to tell whether it made progress.
TRAINER_EXITED = "TrainerExited"
TRAINER_STOPPED = "TrainerStopped"
WORKER_SHUTDOWN = "WorkerShutdown"


def trainer_command(job_file: Path) -> list[str]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    module = ["-m", "tempotrain_workers.trainer_main", str(job_file)]
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            *module,
        ]
    return [sys.executable, *module]


class TrainerSupervisor:
    """Progress goes out in heartbeat details (no workflow history); only a new checkpoint
    is signalled to the workflow."""

    def __init__(
        self,
        request: BertFineTuneRequest,
        runs_root: Path,
        command: Callable[[Path], list[str]] = trainer_command,
    ) -> None:
        self.request = request
        self.config = request.config
        self.run_dir = runs_root / str(self.config.run_id)
        self.command = command
        self.latest: CheckpointInfo | None = None
        self.resumed_step: int | None = None
        self.progress: Progress | None = None
        self.rate = StepRate()
        self.error: dict[str, Any] | None = None
        self.stopped = False  # the trainer said it stopped on request (after its save)
        self.meter = TrainingMeter(str(self.config.run_id), self.config.batch_size)

    async def run(self) -> BertFineTuneResult:
        # From the first moment: the resume scan (sha256 of every checkpoint file) and the
        # torch import can take longer than the heartbeat timeout on a large run.
        heartbeats = asyncio.create_task(self._heartbeat_forever())
        try:
            return await self._supervise()
        finally:
            heartbeats.cancel()

    async def _supervise(self) -> BertFineTuneResult:
        snapshot = self.request.snapshot
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "result.json").unlink(missing_ok=True)
        resume = await asyncio.to_thread(latest_verified, self.run_dir, snapshot.snapshot_hash)
        self.latest = resume
        self.resumed_step = resume.step if resume else None
        self.meter.started(self.resumed_step, reached_step(self.run_dir))
        attempt = max(self.request.attempt, activity.info().attempt)
        job_file = self.run_dir / f".job-attempt-{attempt}.json"
        job = TrainerJob(
            config=self._with_local_model(Path(snapshot.path).parent),
            run_dir=str(self.run_dir),
            snapshot_dir=snapshot.path,
            snapshot_hash=snapshot.snapshot_hash,
            schema_=snapshot.schema_,
            resume_from=resume.path if resume else None,
            resumed_from_step=resume.step if resume else None,
        )
        job_file.write_text(job.model_dump_json())
        log_file = self.run_dir / "logs" / f"trainer-attempt-{attempt}.log"
        log_file.parent.mkdir(exist_ok=True)
        activity.logger.info(
            "fine-tuning run %s attempt %d, resuming from %s",
            self.config.run_id,
            attempt,
            resume.path if resume else "scratch",
        )
        await ml_stack_ready()  # torch too: never beside the worker's warm-up importing it
        command = await asyncio.to_thread(self.command, job_file)
        with log_file.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                preexec_fn=die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
            )
        try:
            await self._relay_events(process)
            returncode = await process.wait()
        except asyncio.CancelledError:
            await self._stop_gracefully(process)
            if activity.is_worker_shutdown():
                # Not a cancellation the workflow asked for: a retryable failure (it just
                # saved, so the workflow retries at once elsewhere), never "Cancelled".
                raise ApplicationError(
                    "the worker shut down; the trainer saved a checkpoint and stopped",
                    self._heartbeat_details().model_dump(mode="json"),
                    type=WORKER_SHUTDOWN,
                ) from None
            raise
        return self._result(returncode, log_file)

    def _with_local_model(self, snapshots_root: Path) -> BertFineTuneConfig:
        model_name = resolve_model(self.config.model_name, snapshots_root)
        return self.config.model_copy(update={"model_name": model_name})

    async def _relay_events(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            # A line already buffered is read without suspending: yield, so that a chatty
            # trainer never starves the heartbeats.
            await asyncio.sleep(0)
            line = raw.decode(errors="replace").rstrip()
            if not line.startswith(EVENT_PREFIX):
                continue
            event = json.loads(line[len(EVENT_PREFIX) :])
            kind = event.pop("event")
            if kind == "checkpoint":
                self.latest = CheckpointInfo.model_validate(event["checkpoint"])
                self.progress = Progress(
                    step=self.latest.step,
                    total_steps=event["total_steps"],
                    epoch=self.latest.epoch,
                    loss=self.latest.loss,
                    steps_per_second=self.progress.steps_per_second if self.progress else None,
                )
                activity.heartbeat(self._heartbeat_details())
                self.meter.saved(
                    self.latest.step,
                    event.get("save_seconds"),
                    event.get("checkpoint_bytes"),
                    event.get("write_seconds"),
                )
                await self._signal("update_checkpoint", self.latest)
            elif kind == "progress":
                # Heartbeat details only: the SDK sends the latest at most every few seconds.
                progress = Progress.model_validate(event)
                rate = self.rate.add(progress.step)
                self.progress = progress.model_copy(update={"steps_per_second": rate})
                self.meter.progressed(progress.step, rate)
                activity.heartbeat(self._heartbeat_details())
            elif kind == "evaluation":
                await self._signal(EVALUATION_SIGNAL, Evaluation.model_validate(event))
            elif kind == "error":
                self.error = event
            elif kind == "stopped":
                self.stopped = True

    async def _signal(self, name: str, payload: Any) -> None:
        info = activity.info()
        if info.workflow_id is None:  # not started by a workflow: nobody to tell
            return
        try:
            handle = activity.client().get_workflow_handle(info.workflow_id)
            await handle.signal(name, payload)
        except Exception as err:  # status is best effort; the checkpoint is on disk regardless
            activity.logger.warning("signal %s to %s failed: %s", name, info.workflow_id, err)

    def _heartbeat_details(self) -> TrainingHeartbeat:
        return TrainingHeartbeat(
            progress=self.progress, checkpoint=self.latest, resumed_step=self.resumed_step
        )

    async def _heartbeat_forever(self) -> None:
        interval = max(1.0, min(HEARTBEAT_SECONDS, self.config.heartbeat_timeout_seconds / 4))
        while True:
            activity.heartbeat(self._heartbeat_details())
            await asyncio.sleep(interval)

    async def _stop_gracefully(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            activity.logger.info("cancelled: asking the trainer to save a checkpoint and stop")
            process.send_signal(signal.SIGTERM)
        # Keep reading its events while it saves: they carry that last checkpoint, and a full
        # stdout pipe would block the trainer (and its exit) for good.
        finishing = asyncio.ensure_future(self._relay_events(process))
        try:
            await asyncio.wait_for(asyncio.shield(finishing), GRACEFUL_STOP_SECONDS)
        except TimeoutError:
            process.kill()
            await finishing  # the pipe closes with the process
        await process.wait()

    def _result(self, returncode: int, log_file: Path) -> BertFineTuneResult:
        if returncode != 0 and self.error:
            # The error event, not the exit code, says what went wrong: torchrun reports its
            # own exit code for a failed rank, so EXIT_BAD_INPUT does not survive it.
            raise non_retryable(ErrorType(self.error["type"]), self.error["message"])
        details = self._heartbeat_details().model_dump(mode="json")
        if returncode == EXIT_STOPPED or (returncode == 0 and self.stopped):
            raise ApplicationError(
                "the trainer stopped on request before finishing", details, type=TRAINER_STOPPED
            )
        if returncode != 0:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
            raise ApplicationError(
                f"trainer exited with {returncode}; last log lines:\n{tail}",
                details,
                type=TRAINER_EXITED,
            )
        result = BertFineTuneResult.model_validate_json((self.run_dir / "result.json").read_text())
        if result.latest_checkpoint is None and self.latest is not None:
            result = result.model_copy(update={"latest_checkpoint": self.latest})
        return result
