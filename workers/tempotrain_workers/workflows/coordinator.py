"""CoordinatorWorkflow: per config, train (child, training queue) then evaluate (child, eval
queue); configs run concurrently. The unit a BertExperiment maps to."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        SUSPEND_SIGNAL,
        BertEvalRequest,
        BertEvalResult,
        BertFineTuneResult,
        BertTrainingInput,
        CoordinatorRunResult,
        CoordinatorWorkflowConfig,
        CoordinatorWorkflowInput,
        CoordinatorWorkflowResult,
        Phase,
        training_workflow_id,
    )
    from tempotrain_workers.workflows.evaluation import BertEvalWorkflow
    from tempotrain_workers.workflows.status import (
        StatusReporter,
        ended_phase,
        root_message,
    )
    from tempotrain_workers.workflows.suspension import Suspension
    from tempotrain_workers.workflows.training import CheckpointedBertTrainingWorkflow


@workflow.defn(failure_exception_types=[ValidationError])
class CoordinatorWorkflow:
    def __init__(self) -> None:
        self._status = StatusReporter(None)
        self._suspension = Suspension()

    @workflow.run
    async def run(self, request: CoordinatorWorkflowInput) -> CoordinatorWorkflowResult:
        self._status = StatusReporter(request.status_target)
        self._status.update(phase=Phase.PENDING, workflow_id=workflow.info().workflow_id)
        try:
            runs = await asyncio.gather(
                *(self._train_and_evaluate(i, c, request) for i, c in enumerate(request.configs))
            )
        except (ActivityError, ChildWorkflowError) as err:
            self._status.update(phase=ended_phase(err), message=root_message(err))
            await self._status.flush()
            raise
        first = runs[0]
        self._status.update(
            phase=Phase.SUCCEEDED,
            metrics=_metrics(first.training, first.evaluation),
        )
        await self._status.flush()
        return CoordinatorWorkflowResult(runs=list(runs))

    async def _train_and_evaluate(
        self, index: int, config: CoordinatorWorkflowConfig, request: CoordinatorWorkflowInput
    ) -> CoordinatorRunResult:
        parent = workflow.info().workflow_id
        suspended = self._suspension.suspended
        child = await workflow.start_child_workflow(
            CheckpointedBertTrainingWorkflow.run,
            BertTrainingInput(
                config=config.fine_tune,
                status_target=request.status_target,
                snapshot_queue=request.eval_queue,
                suspended=suspended,
            ),
            id=training_workflow_id(parent, index),
            task_queue=request.training_queue,
        )
        # The trainer is what a suspension stops: it holds there, with its checkpoint.
        following = asyncio.ensure_future(self._suspension.follow(child, suspended))
        try:
            training: BertFineTuneResult = await child
        finally:
            following.cancel()
        # Suspended after training ended: hold before evaluating (an evaluation already under
        # way runs to its end, minutes, and the experiment completes).
        await self._suspension.hold(self._status, Phase.EVALUATING)
        self._status.update(phase=Phase.EVALUATING, run_id=training.run_id)
        evaluation_request: BertEvalRequest = config.evaluation.model_copy(
            update={"run_id": training.run_id, "snapshot_id": training.snapshot_id}
        )
        evaluation: BertEvalResult = await workflow.execute_child_workflow(
            BertEvalWorkflow.run,
            evaluation_request,
            id=f"{parent}-eval-{index}",
            task_queue=request.eval_queue,
        )
        return CoordinatorRunResult(training=training, evaluation=evaluation)

    @workflow.signal(name=SUSPEND_SIGNAL)
    def set_suspended(self, suspended: bool) -> None:
        self._suspension.set(suspended)


def _metrics(training: BertFineTuneResult, evaluation: BertEvalResult) -> dict[str, float]:
    metrics = {
        "evalAccuracy": evaluation.accuracy,
        "evalLoss": evaluation.loss,
        "numEvalExamples": float(evaluation.num_examples),
    }
    if training.train_loss is not None:
        metrics["trainLoss"] = training.train_loss
    return metrics
