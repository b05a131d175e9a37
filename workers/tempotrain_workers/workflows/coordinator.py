"""CoordinatorWorkflow: per config, train (child, training queue) then evaluate (child, eval
queue); configs run concurrently. The unit a BertExperiment maps to."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
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
    from tempotrain_workers.workflows.training import CheckpointedBertTrainingWorkflow


@workflow.defn(failure_exception_types=[ValidationError])
class CoordinatorWorkflow:
    def __init__(self) -> None:
        self._status = StatusReporter(None)

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
        training: BertFineTuneResult = await workflow.execute_child_workflow(
            CheckpointedBertTrainingWorkflow.run,
            BertTrainingInput(
                config=config.fine_tune,
                status_target=request.status_target,
                snapshot_queue=request.eval_queue,
            ),
            id=training_workflow_id(parent, index),
            task_queue=request.training_queue,
        )
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


def _metrics(training: BertFineTuneResult, evaluation: BertEvalResult) -> dict[str, float]:
    metrics = {
        "evalAccuracy": evaluation.accuracy,
        "evalLoss": evaluation.loss,
        "numEvalExamples": float(evaluation.num_examples),
    }
    if training.train_loss is not None:
        metrics["trainLoss"] = training.train_loss
    return metrics
