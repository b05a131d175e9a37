"""Cifar10ScalingWorkflow: one Ray Train activity per scale, in order, then the comparison.

Scales run one after another on purpose: each uses the whole Ray cluster, and throughput
figures measured side by side would be meaningless. A finished scale is never rerun: its
result is in the history, so a worker crash costs at most the scale in flight, and that one
resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        NON_RETRYABLE_ERRORS,
        SUSPEND_SIGNAL,
        Cifar10ScalingInput,
        Cifar10ScalingResult,
        Phase,
        ScaleTrainRequest,
        ScaleTrainResult,
        compare_scales,
    )
    from tempotrain_workers.workflows.status import (
        StatusReporter,
        ended_phase,
        root_message,
    )
    from tempotrain_workers.workflows.suspension import Suspension

SCALE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)


@workflow.defn(failure_exception_types=[ValidationError])
class Cifar10ScalingWorkflow:
    def __init__(self) -> None:
        self._results: list[ScaleTrainResult] = []
        self._current: int | None = None
        self._suspension = Suspension()
        self._status = StatusReporter(None)

    @workflow.run
    async def run(self, request: Cifar10ScalingInput) -> Cifar10ScalingResult:
        status = self._status = StatusReporter(request.status_target)
        total = len(request.scales)
        status.update(
            phase=Phase.PENDING,
            run_id=request.run_id,
            workflow_id=workflow.info().workflow_id,
            total_scales=total,
        )
        for index in range(total):
            self._current = index + 1
            status.update(phase=Phase.TRAINING, current_scale=index + 1, total_scales=total)
            try:
                result = await self._train_scale(request.request_for(index))
            except ActivityError as err:
                status.update(phase=ended_phase(err), message=root_message(err))
                await status.flush()
                raise
            self._results.append(result)
            status.update(scale_results=compare_scales(self._results), total_scales=total)
        self._current = None
        outcomes = compare_scales(self._results)
        status.update(phase=Phase.SUCCEEDED, scale_results=outcomes, total_scales=total)
        await status.flush()
        return Cifar10ScalingResult(
            experiment_name=request.experiment_name,
            run_id=request.run_id,
            scales=outcomes,
            runs=list(self._results),
        )

    async def _train_scale(self, scale_request: ScaleTrainRequest) -> ScaleTrainResult:
        """One scale to its end; a suspension stops it (Ray Train keeps its last epoch's
        checkpoint), holds, and starts it again, restoring from that checkpoint."""
        while True:
            await self._suspension.hold(self._status, Phase.TRAINING)
            activity = workflow.start_activity(
                "train_cifar10_scale",
                scale_request,
                result_type=ScaleTrainResult,
                start_to_close_timeout=timedelta(days=3),
                heartbeat_timeout=timedelta(seconds=scale_request.heartbeat_timeout_seconds),
                retry_policy=SCALE_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            watcher = asyncio.ensure_future(self._suspension.cancel_when_suspended(activity))
            try:
                # Awaited directly: cancelling the workflow cancels the scale (and Ray Train).
                result: ScaleTrainResult = await activity
                return result
            except ActivityError as err:
                if not (self._suspension.suspended and isinstance(err.cause, CancelledError)):
                    raise
            finally:
                watcher.cancel()

    @workflow.signal(name=SUSPEND_SIGNAL)
    def set_suspended(self, suspended: bool) -> None:
        self._suspension.set(suspended)

    @workflow.query
    def get_results(self) -> list[ScaleTrainResult]:
        return list(self._results)

    @workflow.query
    def get_current_scale(self) -> int | None:
        return self._current
