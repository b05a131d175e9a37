"""CheckpointedBertTrainingWorkflow: snapshot the data, fine-tune with verified resume.

A run may last days, through any number of crashes and preemptions, so:
- its history stays small: progress travels in the activity's heartbeat details (read by the
  operator), only checkpoints are signalled, and the workflow continues as new when the
  server suggests it or its own count is reached;
- failures are budgeted per stretch without progress: each training attempt is one activity
  execution, and the workflow decides what comes next. An attempt that saved a new checkpoint
  is retried at once with a clean slate; only `max_failures_without_progress` attempts in a
  row with nothing saved fail the run, with growing backoff between them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        EVALUATION_SIGNAL,
        NON_RETRYABLE_ERRORS,
        SUSPEND_SIGNAL,
        TRIAL_EVALUATED_SIGNAL,
        WORK_HEARTBEAT_TIMEOUT,
        AttemptFailure,
        BertFineTuneRequest,
        BertFineTuneResult,
        BertTrainingInput,
        CheckpointInfo,
        DatasetSnapshotResult,
        Evaluation,
        Phase,
        Progress,
        RetryState,
        TrainingCarry,
        TrainingHeartbeat,
        TrialEvaluation,
    )
    from tempotrain_workers.workflows.status import StatusReporter, root_message
    from tempotrain_workers.workflows.suspension import Suspension

SNAPSHOT_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE_ERRORS)
# One activity execution per attempt: the workflow retries, so it can tell progress apart.
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
FIRST_BACKOFF = timedelta(seconds=2)
MAX_BACKOFF = timedelta(minutes=2)
TOO_MANY_FAILURES = "TooManyFailuresWithoutProgress"


def backoff(failures_without_progress: int) -> timedelta:
    """None after progress (the count is 0 then); 2 s, 4 s, ... up to 2 min in a row."""
    if failures_without_progress <= 0:
        return timedelta(0)
    seconds = FIRST_BACKOFF.total_seconds() * 2 ** (failures_without_progress - 1)
    return min(MAX_BACKOFF, timedelta(seconds=seconds))


def failure_of(err: ActivityError) -> tuple[str, str, TrainingHeartbeat | None]:
    """(reason, message, the attempt's last heartbeat) of a failed training attempt."""
    cause = err.cause
    details: Any = None
    if isinstance(cause, TimeoutError):
        reason = f"{cause.type.name.title().replace('_', '')}Timeout" if cause.type else "Timeout"
        details = cause.last_heartbeat_details
    elif isinstance(cause, ApplicationError):
        reason = cause.type or "ApplicationError"
        details = cause.details
    else:
        reason = type(cause).__name__ if cause else "ActivityError"
    heartbeat = None
    if details:
        try:
            heartbeat = TrainingHeartbeat.model_validate(details[0])
        except ValidationError:
            heartbeat = None  # an older worker's details: no progress can be read from them
    return reason, root_message(err), heartbeat


def is_final(err: ActivityError) -> bool:
    """Bad input, cancellation: retrying cannot help."""
    cause = err.cause
    if isinstance(cause, CancelledError):
        return True
    return isinstance(cause, ApplicationError) and (
        cause.non_retryable or (cause.type or "") in NON_RETRYABLE_ERRORS
    )


@workflow.defn(failure_exception_types=[ValidationError])
class CheckpointedBertTrainingWorkflow:
    def __init__(self) -> None:
        self._latest: CheckpointInfo | None = None
        self._checkpoints_seen = 0
        self._progress: Progress | None = None
        self._retry: RetryState | None = None
        self._status = StatusReporter(None)
        self._history_limit = 0
        self._suspension = Suspension()
        self._trial: str | None = None  # a sweep's trial name

    @workflow.run
    async def run(self, request: BertTrainingInput) -> BertFineTuneResult:
        self._status = StatusReporter(request.status_target)
        self._trial = request.status_target.trial if request.status_target else None
        self._history_limit = request.history_limit
        self._suspension.begin(request.suspended)
        config = request.config
        if config.run_id is None:
            # Canonical run id, written back so every activity and the result agree on it.
            config = config.model_copy(update={"run_id": f"run-{workflow.info().run_id[:8]}"})
        carry = request.carry
        if carry is None:
            self._status.update(
                phase=Phase.SNAPSHOTTING,
                run_id=config.run_id,
                workflow_id=workflow.info().workflow_id,
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
        else:
            snapshot = carry.snapshot
            self._latest, self._checkpoints_seen = carry.latest, carry.checkpoints_seen
            self._retry = carry.retry
        fine_tune = BertFineTuneRequest(config=config, snapshot=snapshot)
        result = await self._train(fine_tune)
        if result is None:  # history is long: the next run carries on from here
            await self._status.flush()
            workflow.continue_as_new(
                request.model_copy(
                    update={
                        "config": config,
                        "carry": TrainingCarry(
                            snapshot=snapshot,
                            latest=self._latest,
                            checkpoints_seen=self._checkpoints_seen,
                            retry=self._retry,
                        ),
                        "suspended": self._suspension.suspended,
                    }
                )
            )
        if result.latest_checkpoint is not None:
            self._record(result.latest_checkpoint)
        if self._retry is not None and self._retry.degraded:
            self._retry = self._retry.model_copy(update={"failures_without_progress": 0})
        self._status.update(
            progress=Progress(
                step=result.global_step, total_steps=result.total_steps, loss=result.train_loss
            ),
            metrics={
                k: v
                for k, v in {"trainLoss": result.train_loss, "evalLoss": result.eval_loss}.items()
                if v is not None
            },
            retry=self._retry,
        )
        await self._status.flush()
        return result

    async def _train(self, fine_tune: BertFineTuneRequest) -> BertFineTuneResult | None:
        """Attempts until one finishes; None when the run should continue as new first."""
        max_failures = fine_tune.config.max_failures_without_progress
        while True:
            if self._history_full():
                return None
            # Suspended: the last attempt saved and stopped; wait here, then go on from there.
            await self._suspension.hold(self._status, Phase.TRAINING)
            retry = self._retry
            self._retry = RetryState(
                attempts=(retry.attempts if retry else 0) + 1,
                failures_without_progress=retry.failures_without_progress if retry else 0,
                max_failures_without_progress=max_failures,
                last_failure=retry.last_failure if retry else None,
            )
            self._status.update(retry=self._retry)
            before = self._latest.step if self._latest else -1
            try:
                return await self._attempt(
                    fine_tune.model_copy(
                        update={"resume_from": self._latest, "attempt": self._retry.attempts}
                    )
                )
            except _Stopped:
                continue  # to continue as new, or to hold while suspended
            except ActivityError as err:
                if is_final(err):
                    raise
                reason, message, heartbeat = failure_of(err)
                if heartbeat is not None:
                    # What the attempt resumed from was there before it: not its progress.
                    if heartbeat.resumed_step is not None:
                        before = max(before, heartbeat.resumed_step)
                    if heartbeat.checkpoint is not None:
                        self._record(heartbeat.checkpoint)
                progressed = (self._latest.step if self._latest else -1) > before
                in_a_row = 0 if progressed else self._retry.failures_without_progress + 1
                self._retry = self._retry.model_copy(
                    update={
                        "failures_without_progress": in_a_row,
                        "last_failure": AttemptFailure(
                            reason=reason, message=message[-4096:], at=workflow.now()
                        ),
                    }
                )
                self._status.update(retry=self._retry)
                workflow.logger.warning(
                    "training attempt %d failed (%s), %s",
                    self._retry.attempts,
                    reason,
                    "after progress: retrying now"
                    if progressed
                    else f"{in_a_row} of {max_failures} in a row without progress",
                )
                if in_a_row >= max_failures:
                    raise ApplicationError(
                        f"{in_a_row} training attempts in a row failed without saving a new "
                        f"checkpoint; the last: {reason}: {message}",
                        type=TOO_MANY_FAILURES,
                        non_retryable=True,
                    ) from err
                pause = backoff(in_a_row)
                if pause:
                    await workflow.sleep(pause)

    async def _attempt(self, fine_tune: BertFineTuneRequest) -> BertFineTuneResult:
        activity = workflow.start_activity(
            "fine_tune_bert",
            fine_tune,
            result_type=BertFineTuneResult,
            start_to_close_timeout=timedelta(days=7),
            heartbeat_timeout=timedelta(seconds=fine_tune.config.heartbeat_timeout_seconds),
            retry_policy=ONE_ATTEMPT,
            # On cancellation wait for the trainer's final checkpoint before going away.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        stopping = False

        async def stop_when_asked() -> None:
            # Checkpoint signals filled the history, or the experiment is suspended: stop the
            # trainer (it saves on SIGTERM); the next attempt resumes from that checkpoint.
            nonlocal stopping
            await workflow.wait_condition(
                lambda: self._history_full() or self._suspension.suspended
            )
            stopping = True
            activity.cancel()

        watcher = asyncio.ensure_future(stop_when_asked())
        try:
            # Awaited directly: cancelling the workflow cancels the attempt (and its trainer).
            result: BertFineTuneResult = await activity
            return result
        except ActivityError as err:
            if stopping and isinstance(err.cause, CancelledError):
                raise _Stopped() from err
            raise
        finally:
            watcher.cancel()

    def _history_full(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._history_limit
        )

    @workflow.signal(name=SUSPEND_SIGNAL)
    def set_suspended(self, suspended: bool) -> None:
        self._suspension.set(suspended)

    @workflow.signal
    def update_checkpoint(self, checkpoint: CheckpointInfo) -> None:
        self._record(checkpoint)

    @workflow.signal(name=EVALUATION_SIGNAL)
    async def report_evaluation(self, evaluation: Evaluation) -> None:
        """An evaluation during training: its metrics go to status and, for a sweep's trial,
        to the coordinator, which may stop the trial early (the median rule)."""
        metrics = {"evalLoss": evaluation.eval_loss, "evalAccuracy": evaluation.eval_accuracy}
        self._status.update(metrics={k: v for k, v in metrics.items() if v is not None})
        parent = workflow.info().parent
        if parent is None or self._trial is None:
            return
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                TRIAL_EVALUATED_SIGNAL, TrialEvaluation(trial=self._trial, evaluation=evaluation)
            )
        except Exception as err:  # the sweep ended meanwhile: nobody left to judge it
            workflow.logger.info("evaluation not forwarded: %s", err)

    @workflow.signal
    def update_progress(self, progress: Progress) -> None:
        # Kept for histories recorded before progress moved to heartbeat details.
        self._progress = progress
        self._status.update(progress=progress)

    @workflow.query
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        return self._latest

    @workflow.query
    def get_progress(self) -> Progress | None:
        return self._progress

    @workflow.query
    def get_retry_state(self) -> RetryState | None:
        return self._retry

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
        update: dict[str, Any] = {}
        if self._retry is not None and self._retry.degraded:
            # A new checkpoint is progress: the run is healthy again, whatever came before.
            self._retry = self._retry.model_copy(update={"failures_without_progress": 0})
            update["retry"] = self._retry
        self._status.update(
            latest_checkpoint=checkpoint,
            checkpoints_saved=self._checkpoints_seen,
            progress=self._progress,
            **update,
        )


class _Stopped(Exception):
    """The running attempt was stopped (it saved first) to continue as new or to suspend."""
