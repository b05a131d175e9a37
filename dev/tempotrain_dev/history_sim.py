"""A compressed long training run against a real Temporal server, to measure its history.

The real training workflow and supervising activity run around `sim_trainer` (a trainer that
simulates hours in seconds, with real verified checkpoints), with a status sink recording
what the operator would be sent. Each run of the workflow's continue-as-new chain is counted:
the events in it, and which are checkpoint signals.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker
from tempotrain_workers.activities import BertActivities, StorageRoots
from tempotrain_workers.api import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertTrainingInput,
    RetryState,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.workflows import CheckpointedBertTrainingWorkflow

from tempotrain_dev.sim_trainer import CommandFactory

TICK_SECONDS = 2.0  # one progress event per 2 s of training, as the real trainer reports


@dataclass(frozen=True)
class Scenario:
    hours: float
    checkpoint_minutes: float | None = None  # None: no checkpoint until the end
    crash_at_hours: tuple[float, ...] = ()  # one crash at each (a preemption, an OOM)
    fail_from_hour: float | None = None  # every attempt crashes from here on
    history_limit: int = 4000
    max_failures_without_progress: int = 5
    tick_seconds: float = TICK_SECONDS  # coarser: fewer progress events, a faster run

    def ticks(self, hours: float) -> int:
        return int(hours * 3600 / self.tick_seconds)

    def command(self) -> CommandFactory:
        every = self.ticks(self.checkpoint_minutes / 60) if self.checkpoint_minutes else None
        return CommandFactory(
            self.ticks(self.hours),
            every,
            tuple(self.ticks(h) for h in self.crash_at_hours),
            self.ticks(self.fail_from_hour) if self.fail_from_hour is not None else None,
        )


@dataclass
class Outcome:
    events_per_run: list[int]
    checkpoint_signals_per_run: list[int]
    progress_signals: int
    status_updates: int
    seconds: float
    result: BertFineTuneResult | None = None
    failure: str | None = None
    failure_type: str | None = None
    retry: RetryState | None = None
    last_status: StatusUpdate | None = None
    scenario: Scenario = field(default_factory=lambda: Scenario(hours=0))

    @property
    def events(self) -> int:
        return sum(self.events_per_run)

    def events_per_hour_without_checkpoints(self) -> float:
        """History per simulated hour, leaving out each checkpoint's signal (the issue's
        measure: checkpoints are the one thing allowed to cost history)."""
        return (self.events - sum(self.checkpoint_signals_per_run)) / self.scenario.hours


class StatusRecorder:
    """Stands in for the operator's publish_status: every update, in order."""

    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    @activity.defn(name="publish_status")
    async def publish_status(self, update: StatusUpdate) -> None:
        self.updates.append(update)


async def simulate(client: Client, scenario: Scenario, workdir: Path) -> Outcome:
    suffix = uuid.uuid4().hex[:8]
    training_queue, status_queue = f"sim-train-{suffix}", f"sim-status-{suffix}"
    roots = StorageRoots(workdir / "snapshots", workdir / "runs")
    data = write_sentiment_jsonl(workdir / "data" / "rows.jsonl", 200)
    config = BertFineTuneConfig(
        run_id=f"sim-{suffix}",
        model_name="simulated",
        dataset_name=str(data),
        dataset_config=None,
        save_steps=10**9,  # the simulator decides when to save
        max_failures_without_progress=scenario.max_failures_without_progress,
        heartbeat_timeout_seconds=15,
    )
    target = StatusTarget(kind="BertExperiment", namespace="sim", name="sim", queue=status_queue)
    recorder = StatusRecorder()
    activities = BertActivities(roots, scenario.command()).all()
    workflow_id = f"history-sim-{suffix}"
    started = time.monotonic()
    outcome = Outcome([], [], 0, 0, 0.0, scenario=scenario)
    async with (
        Worker(
            client,
            task_queue=training_queue,
            workflows=[CheckpointedBertTrainingWorkflow],
            activities=activities,
            max_heartbeat_throttle_interval=timedelta(seconds=5),
        ),
        Worker(client, task_queue=status_queue, activities=[recorder.publish_status]),
    ):
        handle = await client.start_workflow(
            CheckpointedBertTrainingWorkflow.run,
            BertTrainingInput(
                config=config,
                status_target=target,
                snapshot_queue=training_queue,
                history_limit=scenario.history_limit,
            ),
            id=workflow_id,
            task_queue=training_queue,
            execution_timeout=timedelta(minutes=30),
        )
        try:
            outcome.result = await handle.result()
        except WorkflowFailureError as err:
            outcome.failure = f"{err.cause}"
            if isinstance(err.cause, ApplicationError):
                outcome.failure_type = err.cause.type
        with contextlib.suppress(Exception):
            outcome.retry = await handle.query(CheckpointedBertTrainingWorkflow.get_retry_state)
    outcome.seconds = time.monotonic() - started
    await _count_runs(client, workflow_id, handle.first_execution_run_id, outcome)
    outcome.status_updates = len(recorder.updates)
    retries = [u.retry for u in recorder.updates if u.retry is not None]
    outcome.retry = outcome.retry or (retries[-1] if retries else None)
    outcome.last_status = recorder.updates[-1] if recorder.updates else None
    return outcome


async def _count_runs(
    client: Client, workflow_id: str, first_run: str | None, outcome: Outcome
) -> None:
    """Walk the continue-as-new chain from its first run: events and signals per run."""
    run_id = first_run
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events = history.events
        signals = [
            e.workflow_execution_signaled_event_attributes.signal_name
            for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        outcome.events_per_run.append(len(events))
        outcome.checkpoint_signals_per_run.append(signals.count("update_checkpoint"))
        outcome.progress_signals += signals.count("update_progress")
        last = events[-1]
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        else:
            run_id = None
