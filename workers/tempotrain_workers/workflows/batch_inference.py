"""BatchInferenceWorkflow: plan, chunks with at most `workers` in flight, continue-as-new every
`chunks_per_run` chunks, then one merge.

Deterministic: the chunk list is computed from the input; which chunk finishes first only
changes the order results are counted in, never what is scheduled next. A worker that dies
mid-chunk costs that chunk only: its heartbeat stops, and the chunk is retried elsewhere.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        DEFAULT_CHUNK_SIZE,
        NON_RETRYABLE_ERRORS,
        SUSPEND_SIGNAL,
        BatchInferenceInput,
        BatchInferenceResult,
        ChunkOutcome,
        ChunkRequest,
        ChunkTally,
        InferencePlan,
        InferenceProgress,
        MergeRequest,
        MergeResult,
        Phase,
        PlanRequest,
        RowRange,
        RowSelection,
        chunk_ranges,
    )
    from tempotrain_workers.workflows.status import (
        StatusReporter,
        ended_phase,
        root_message,
    )
    from tempotrain_workers.workflows.suspension import Suspension

CHUNK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)


@workflow.defn(failure_exception_types=[ValidationError])
class BatchInferenceWorkflow:
    def __init__(self) -> None:
        self._progress: InferenceProgress | None = None
        self._suspension = Suspension()

    @workflow.run
    async def run(self, request: BatchInferenceInput) -> BatchInferenceResult:
        status = StatusReporter(request.status_target)
        self._suspension.begin(request.suspended)
        tally = request.tally
        if tally.started_at is None:  # the first run of the chain
            tally = tally.model_copy(update={"started_at": workflow.now()})
            status.update(
                phase=Phase.PENDING,
                run_id=request.job.job_id,
                workflow_id=workflow.info().workflow_id,
            )
        try:
            plan = await self._plan(request)
            # The plan's size: the spec's, or the one recorded with the output, or measured.
            # (None only from a worker that predates measuring: the spec's then.)
            chunk_size = plan.chunk_size or request.chunk_size or DEFAULT_CHUNK_SIZE
            request = request.model_copy(update={"chunk_size": chunk_size})
            ranges = chunk_ranges(plan.range, chunk_size)
            if plan.existing is not None:  # this exact output is already there: nothing to do
                tally = tally.model_copy(
                    update={"skipped": len(ranges), "rows": plan.existing.rows}
                )
                return await self._finish(status, ranges, tally, plan.existing)
            status.update(phase=Phase.RUNNING, inference=self._report(ranges, tally))
            stop = min(len(ranges), tally.next_index + request.chunks_per_run)
            tally = await self._process(
                request, ranges[tally.next_index : stop], tally, status, ranges
            )
            tally = tally.model_copy(update={"next_index": stop})
            if stop < len(ranges):
                await status.flush()  # the next run starts with an empty reporter
                resolved = RowSelection(start=plan.range.start, end=plan.range.end)
                workflow.continue_as_new(
                    request.model_copy(
                        update={
                            "range": resolved,
                            "tally": tally,
                            "suspended": self._suspension.suspended,
                        }
                    )
                )
            merged: MergeResult = await workflow.execute_activity(
                "merge_chunks",
                MergeRequest(
                    job=request.job,
                    range=plan.range,
                    chunk_size=chunk_size,
                    retain_chunks=request.retain_chunks,
                ),
                result_type=MergeResult,
                task_queue=request.inference_queue,
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
                retry_policy=CHUNK_RETRY,
            )
            return await self._finish(status, ranges, tally, merged)
        except ActivityError as err:
            status.update(phase=ended_phase(err), message=root_message(err))
            await status.flush()
            raise

    async def _plan(self, request: BatchInferenceInput) -> InferencePlan:
        plan: InferencePlan = await workflow.execute_activity(
            "plan_inference",
            PlanRequest(
                job=request.job,
                range=request.range,
                chunk_size=request.chunk_size,
                in_flight=request.workers,
            ),
            result_type=InferencePlan,
            task_queue=request.inference_queue,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
            retry_policy=CHUNK_RETRY,
        )
        return plan

    async def _finish(
        self,
        status: StatusReporter,
        ranges: list[RowRange],
        tally: ChunkTally,
        output: MergeResult,
    ) -> BatchInferenceResult:
        progress = self._report(ranges, tally).model_copy(update={"output": output})
        self._progress = progress
        status.update(phase=Phase.SUCCEEDED, inference=progress)
        await status.flush()
        return BatchInferenceResult(
            output=output, chunks_total=len(ranges), chunk_size=progress.chunk_size, tally=tally
        )

    async def _process(
        self,
        request: BatchInferenceInput,
        ranges: list[RowRange],
        tally: ChunkTally,
        status: StatusReporter,
        every: list[RowRange],
    ) -> ChunkTally:
        """Every chunk, at most `workers` at a time. After a failed chunk nothing new starts;
        the chunks in flight finish (their outputs count on a re-run), then the error rises.
        Suspended: nothing new starts either; once the chunks in flight have finished (each
        one's output is on the volume) it holds, and carries on with the rest when resumed."""
        pending = list(reversed(ranges))
        # A list, not a set: results are counted (and the first failure chosen) in the order
        # the chunks started, which replays the same; a set of tasks iterates by address.
        in_flight: list[asyncio.Task[ChunkOutcome]] = []
        failure: ActivityError | None = None
        while in_flight or (pending and failure is None):
            if not in_flight and await self._suspension.hold(status, Phase.RUNNING):
                continue
            while (
                pending
                and failure is None
                and not self._suspension.suspended
                and len(in_flight) < request.workers
            ):
                in_flight.append(asyncio.ensure_future(self._chunk(request, pending.pop())))
            # workflow.wait, not asyncio.wait: deterministic on replay.
            done, _ = await workflow.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            finished = [task for task in in_flight if task in done]
            in_flight = [task for task in in_flight if task not in done]
            for task in finished:
                try:
                    tally = _count(tally, task.result())
                except ActivityError as err:
                    tally = tally.model_copy(update={"failed": tally.failed + 1})
                    failure = failure or err
            status.update(inference=self._report(every, tally))
        if failure is not None:
            raise failure
        return tally

    def _report(self, ranges: list[RowRange], tally: ChunkTally) -> InferenceProgress:
        elapsed = (workflow.now() - tally.started_at).total_seconds() if tally.started_at else 0
        progress = InferenceProgress(
            total=len(ranges),
            chunk_size=ranges[0].end - ranges[0].start if ranges else None,
            completed=tally.completed,
            skipped=tally.skipped,
            failed=tally.failed,
            rows_per_second=round(tally.computed_rows / elapsed, 2) if elapsed > 0 else None,
        )
        self._progress = progress
        return progress

    async def _chunk(self, request: BatchInferenceInput, rows: RowRange) -> ChunkOutcome:
        outcome: ChunkOutcome = await workflow.execute_activity(
            "process_chunk",
            ChunkRequest(job=request.job, range=rows),
            result_type=ChunkOutcome,
            task_queue=request.inference_queue,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
            retry_policy=CHUNK_RETRY,
        )
        return outcome

    @workflow.query
    def get_progress(self) -> InferenceProgress | None:
        return self._progress

    @workflow.signal(name=SUSPEND_SIGNAL)
    def set_suspended(self, suspended: bool) -> None:
        self._suspension.set(suspended)


def _count(tally: ChunkTally, outcome: ChunkOutcome) -> ChunkTally:
    computed = not outcome.skipped
    return tally.model_copy(
        update={
            "completed": tally.completed + int(computed),
            "skipped": tally.skipped + int(outcome.skipped),
            "recomputed": tally.recomputed + int(outcome.recomputed),
            "retried": tally.retried + int(computed and outcome.attempt > 1),
            "rows": tally.rows + outcome.rows,
            "computed_rows": tally.computed_rows + (outcome.rows if computed else 0),
            "compute_seconds": round(tally.compute_seconds + outcome.seconds, 3),
        }
    )
