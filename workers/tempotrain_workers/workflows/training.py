"""CheckpointedBertTrainingWorkflow: snapshot the data, fine-tune with verified resume."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        NON_RETRYABLE_ERRORS,
        WORK_HEARTBEAT_TIMEOUT,
        BertFineTuneRequest,
        BertFineTuneResult,
        BertTrainingInput,
        CheckpointInfo,
        DatasetSnapshotResult,
        Phase,
        Progress,
    )
    from tempotrain_workers.workflows.status import StatusReporter

SNAPSHOT_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE_ERRORS)
# A crashed or lost worker costs one attempt; ten in a row means something is really wrong.
TRAINING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)


@workflow.defn(failure_exception_types=[ValidationError])
class CheckpointedBertTrainingWorkflow:
    def __init__(self) -> None:
        self._latest: CheckpointInfo | None = None
        self._checkpoints_seen = 0
        self._progress: Progress | None = None
        self._status = StatusReporter(None)

    @workflow.run
    async def run(self, request: BertTrainingInput) -> BertFineTuneResult:
        self._status = StatusReporter(request.status_target)
        config = request.config
        if config.run_id is None:
            # Canonical run id, written back so every activity and the result agree on it.
            config = config.model_copy(update={"run_id": f"run-{workflow.info().run_id[:8]}"})
        self._status.update(
            phase=Phase.SNAPSHOTTING, run_id=config.run_id, workflow_id=workflow.info().workflow_id
        )
        snapshot: DatasetSnapshotResult = await workflow.execute_activity(
            "create_dataset_snapshot",
            config.snapshot_request(),
            result_type=DatasetSnapshotResult,
            task_queue=request.snapshot_queue,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=WORK_HEARTBEAT_TIMEOUT,
            retry_policy=SNAPSHOT_RETRY,
        )
        self._status.update(phase=Phase.TRAINING, snapshot=snapshot)
        result: BertFineTuneResult = await workflow.execute_activity(
            "fine_tune_bert",
            BertFineTuneRequest(config=config, snapshot=snapshot, resume_from=self._latest),
            result_type=BertFineTuneResult,
            start_to_close_timeout=timedelta(days=7),
            heartbeat_timeout=timedelta(seconds=config.heartbeat_timeout_seconds),
            retry_policy=TRAINING_RETRY,
            # On cancellation wait for the trainer's final checkpoint before going away.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if result.latest_checkpoint is not None:
            self._record(result.latest_checkpoint)
        self._status.update(
            progress=Progress(
                step=result.global_step, total_steps=result.total_steps, loss=result.train_loss
            ),
            metrics={
                k: v
                for k, v in {"trainLoss": result.train_loss, "evalLoss": result.eval_loss}.items()
                if v is not None
            },
        )
        await self._status.flush()
        return result

    @workflow.signal
    def update_checkpoint(self, checkpoint: CheckpointInfo) -> None:
        self._record(checkpoint)

    @workflow.signal
    def update_progress(self, progress: Progress) -> None:
        self._progress = progress
        self._status.update(progress=progress)

    @workflow.query
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        return self._latest

    @workflow.query
    def get_progress(self) -> Progress | None:
        return self._progress

    def _record(self, checkpoint: CheckpointInfo) -> None:
        if self._latest is not None and checkpoint.step <= self._latest.step:
            return  # duplicates and stale reorderings change nothing
        self._latest = checkpoint
        self._checkpoints_seen += 1
        self._progress = Progress(
            step=checkpoint.step,
            total_steps=self._progress.total_steps if self._progress else None,
            epoch=checkpoint.epoch,
            loss=checkpoint.loss,
        )
        self._status.update(
            latest_checkpoint=checkpoint,
            checkpoints_saved=self._checkpoints_seen,
            progress=self._progress,
        )
