"""CoordinatorWorkflow: per config, train (child, training queue) then evaluate (child, eval
queue); configs run concurrently. The unit a BertExperiment maps to."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        SUSPEND_SIGNAL,
        TRIAL_EVALUATED_SIGNAL,
        BertEvalRequest,
        BertEvalResult,
        BertFineTuneResult,
        BertTrainingInput,
        CoordinatorRunResult,
        CoordinatorWorkflowConfig,
        CoordinatorWorkflowInput,
        CoordinatorWorkflowResult,
        Phase,
        StatusTarget,
        SweepPolicy,
        SweepProgress,
        TrialEvaluation,
        TrialOutcome,
        better,
        median_stop,
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
        self._sweep: _Sweep | None = None

    @workflow.run
    async def run(self, request: CoordinatorWorkflowInput) -> CoordinatorWorkflowResult:
        self._status = StatusReporter(request.status_target)
        self._status.update(phase=Phase.PENDING, workflow_id=workflow.info().workflow_id)
        if request.sweep is not None:
            self._sweep = _Sweep(self, request, request.sweep)
            return await self._sweep.run()
        try:
            runs = await asyncio.gather(
                *(
                    self._train_and_evaluate(i, c, request, self._status)
                    for i, c in enumerate(request.configs)
                )
            )
        except (ActivityError, ChildWorkflowError) as err:
            self._status.update(phase=ended_phase(err), message=root_message(err))
            await self._status.flush()
            raise
        first = runs[0]
        self._status.update(
            phase=Phase.SUCCEEDED,
            metrics=metrics_of(first.training, first.evaluation),
        )
        await self._status.flush()
        return CoordinatorWorkflowResult(runs=list(runs))

    async def _train_and_evaluate(
        self,
        index: int,
        config: CoordinatorWorkflowConfig,
        request: CoordinatorWorkflowInput,
        status: StatusReporter,
    ) -> CoordinatorRunResult:
        """`status`: where this run's phases go (the experiment, or its trial's row)."""
        parent = workflow.info().workflow_id
        suspended = self._suspension.suspended
        target = status_target_of(request, config)
        child = await workflow.start_child_workflow(
            CheckpointedBertTrainingWorkflow.run,
            BertTrainingInput(
                config=config.fine_tune,
                status_target=target,
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
        await self._suspension.hold(status, Phase.EVALUATING)
        status.update(phase=Phase.EVALUATING, run_id=training.run_id)
        evaluation_request: BertEvalRequest = config.evaluation.model_copy(
            update={"run_id": training.run_id, "snapshot_id": training.snapshot_id}
        )
        evaluation: BertEvalResult = await workflow.execute_child_workflow(
            BertEvalWorkflow.run,
            evaluation_request,
            id=f"{parent}-eval-{index}",
            task_queue=request.eval_queue,
        )
        return CoordinatorRunResult(training=training, evaluation=evaluation, trial=config.trial)

    @workflow.signal(name=SUSPEND_SIGNAL)
    def set_suspended(self, suspended: bool) -> None:
        self._suspension.set(suspended)

    @workflow.signal(name=TRIAL_EVALUATED_SIGNAL)
    def trial_evaluated(self, report: TrialEvaluation) -> None:
        if self._sweep is not None:
            self._sweep.evaluated(report)


def status_target_of(
    request: CoordinatorWorkflowInput, config: CoordinatorWorkflowConfig
) -> StatusTarget | None:
    """Where a config's updates go: the experiment, or a sweep trial's row in it."""
    target = request.status_target
    if target is None or config.trial is None:
        return target
    return target.model_copy(update={"trial": config.trial})


def metrics_of(training: BertFineTuneResult, evaluation: BertEvalResult) -> dict[str, float]:
    metrics = {
        "evalAccuracy": evaluation.accuracy,
        "evalLoss": evaluation.loss,
        "numEvalExamples": float(evaluation.num_examples),
    }
    if training.train_loss is not None:
        metrics["trainLoss"] = training.train_loss
    return metrics


SWEEP_FAILED = "SweepFailed"


class _Sweep:
    """The configs as a sweep's trials: at most `max_parallel` at once, started in order; a
    failed trial is counted, not fatal, until every trial has failed or more than
    `max_failed_trials` have (then the rest are cancelled and the sweep fails)."""

    def __init__(
        self,
        coordinator: CoordinatorWorkflow,
        request: CoordinatorWorkflowInput,
        policy: SweepPolicy,
    ) -> None:
        self._coordinator = coordinator
        self._request = request
        self._policy = policy
        self._status = coordinator._status
        self._running = 0
        self._next = 0  # the next trial to start: they start in order
        self._outcomes: dict[int, TrialOutcome] = {}
        self._runs: dict[int, CoordinatorRunResult] = {}
        self._giving_up = False
        # The median rule's input: per trial, step → objective value of its evaluations.
        self._evaluations: dict[str, dict[int, float]] = {}
        self._stopped_early: dict[str, str] = {}  # trial → why
        self._task_of: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> CoordinatorWorkflowResult:
        self._report()
        for index, config in enumerate(self._request.configs):
            self._task_of[config.trial or str(index)] = asyncio.ensure_future(
                self._trial(index, config)
            )
        # Every trial to its end, even when the sweep is cancelled (deleted): a trial waiting
        # for its slot ends at once, and plain gather would then end the sweep while the
        # others' trainers are still saving (their children terminated when it closes).
        # Cancelled, this raises once all have ended; a trial's own error is raised here.
        for ended in await asyncio.gather(*self._task_of.values(), return_exceptions=True):
            if isinstance(ended, BaseException):
                raise ended
        outcomes = [self._outcomes[i] for i in range(len(self._request.configs))]
        best = self._best()
        succeeded = [o for o in outcomes if o.phase == Phase.SUCCEEDED]
        if self._giving_up or not succeeded:
            failed = [o for o in outcomes if o.phase == Phase.FAILED]
            why = (
                f"{len(failed)} of {len(outcomes)} trials failed"
                + (
                    f", more than maxFailedTrials ({self._policy.max_failed_trials})"
                    if self._giving_up
                    else ""
                )
                + (f"; the last: {failed[-1].name}: {failed[-1].message}" if failed else "")
            )
            self._status.update(phase=Phase.FAILED, message=why)
            await self._status.flush()
            raise ApplicationError(why, type=SWEEP_FAILED, non_retryable=True)
        update: dict[str, Any] = {"phase": Phase.SUCCEEDED}
        best_run = next((r for r in self._runs.values() if best and r.trial == best.name), None)
        if best_run is not None:
            update["metrics"] = metrics_of(best_run.training, best_run.evaluation)
        self._status.update(**update)
        await self._status.flush()
        return CoordinatorWorkflowResult(
            runs=[self._runs[i] for i in sorted(self._runs)], trials=outcomes, best=best
        )

    async def _trial(self, index: int, config: CoordinatorWorkflowConfig) -> None:
        name = config.trial or str(index)
        run_id = config.fine_tune.run_id or name
        row = StatusReporter(status_target_of(self._request, config))
        try:
            await workflow.wait_condition(
                lambda: (
                    self._giving_up
                    or (self._next == index and self._running < self._policy.max_parallel)
                )
            )
        except asyncio.CancelledError:
            if not self._giving_up:
                raise  # the sweep is cancelled: this trial never starts
        if self._giving_up:
            self._end(index, TrialOutcome(name=name, run_id=run_id, phase=Phase.CANCELLED), row)
            await row.flush()
            return
        self._next += 1
        self._running += 1
        self._status.update(phase=Phase.TRAINING)
        self._report()
        try:
            run = await self._coordinator._train_and_evaluate(index, config, self._request, row)
        except (ActivityError, ChildWorkflowError) as err:
            phase = ended_phase(err)
            message = self._stopped_early.get(name) or root_message(err)
            self._end(
                index, TrialOutcome(name=name, run_id=run_id, phase=phase, message=message), row
            )
            self._check_failures()
        except asyncio.CancelledError:
            why = self._stopped_early.get(name)
            if not self._giving_up and why is None:
                raise  # the sweep itself is cancelled (deleted): so is every trial
            stopped = TrialOutcome(name=name, run_id=run_id, phase=Phase.CANCELLED, message=why)
            self._end(index, stopped, row)
        else:
            self._runs[index] = run
            value = run.evaluation.accuracy if self._maximize else run.evaluation.loss
            outcome = TrialOutcome(name=name, run_id=run_id, phase=Phase.SUCCEEDED, value=value)
            row.update(metrics=metrics_of(run.training, run.evaluation))
            self._end(index, outcome, row)
        finally:
            self._running -= 1
            self._report()
        await row.flush()

    @property
    def _maximize(self) -> bool:
        return self._policy.objective.maximize

    def _end(self, index: int, outcome: TrialOutcome, row: StatusReporter) -> None:
        self._outcomes[index] = outcome
        row.update(phase=outcome.phase, message=outcome.message)

    def evaluated(self, report: TrialEvaluation) -> None:
        """An evaluation during a trial's training: recorded, and with early stopping on, the
        trial is stopped (it saves; its worker takes the next trial) when the median rule
        says so."""
        value = report.evaluation.value(self._policy.objective)
        if value is None:
            return
        self._evaluations.setdefault(report.trial, {})[report.evaluation.step] = value
        after = self._policy.stop_after_evaluations
        task = self._task_of.get(report.trial)
        if after is None or task is None or task.done() or report.trial in self._stopped_early:
            return
        why = median_stop(
            self._policy.objective,
            report.trial,
            self._evaluations,
            after,
            self._policy.stop_min_trials,
        )
        if why is not None:
            workflow.logger.info("trial %s %s", report.trial, why)
            self._stopped_early[report.trial] = why
            task.cancel()

    def _check_failures(self) -> None:
        """Past maxFailedTrials: cancel the trials still running, start no other."""
        limit = self._policy.max_failed_trials
        failed = sum(o.phase == Phase.FAILED for o in self._outcomes.values())
        if limit is None or failed <= limit or self._giving_up:
            return
        self._giving_up = True
        for task in self._task_of.values():
            if not task.done():
                task.cancel()

    def _best(self) -> TrialOutcome | None:
        best: TrialOutcome | None = None
        for outcome in self._outcomes.values():
            if outcome.value is not None and better(
                self._policy.objective, outcome.value, best.value if best else None
            ):
                best = outcome
        return best

    def _report(self) -> None:
        ended = list(self._outcomes.values())
        self._status.update(
            sweep=SweepProgress(
                total=len(self._request.configs),
                running=self._running,
                succeeded=sum(o.phase == Phase.SUCCEEDED for o in ended),
                failed=sum(o.phase == Phase.FAILED for o in ended),
                stopped=sum(o.phase == Phase.CANCELLED for o in ended),
                objective=self._policy.objective,
                best=self._best(),
            )
        )
