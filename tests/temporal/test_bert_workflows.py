"""BERT workflows on the real dev server with the real HF Trainer (MiniLM or a tiny BERT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from tempotrain_workers.activities import BertActivities, StorageRoots
from tempotrain_workers.api import (
    BertFineTuneConfig,
    BertInferenceRequest,
    BertTrainingInput,
    CoordinatorWorkflowConfig,
    CoordinatorWorkflowInput,
    Phase,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.checkpoints import checkpoint_dirs
from tempotrain_workers.workflows import (
    ALL_WORKFLOWS,
    BertInferenceWorkflow,
    CheckpointedBertTrainingWorkflow,
    CoordinatorWorkflow,
)
from tests.support import eventually

if TYPE_CHECKING:
    from tests.conftest import TemporalHandle

pytestmark = pytest.mark.temporal


class StatusRecorder:
    """Stands in for the operator's publish_status (built in the operator issue)."""

    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    @activity.defn(name="publish_status")
    async def publish_status(self, update: StatusUpdate) -> None:
        self.updates.append(update)


def _queues() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"training": f"train-{suffix}", "eval": f"eval-{suffix}", "status": f"op-{suffix}"}


@asynccontextmanager
async def bert_workers(
    client: Client, roots: StorageRoots, queues: dict[str, str], recorder: StatusRecorder
) -> AsyncIterator[None]:
    activities = BertActivities(roots).all()
    workers = [
        Worker(client, task_queue=queues["training"], workflows=ALL_WORKFLOWS,
               activities=activities),
        Worker(client, task_queue=queues["eval"], workflows=ALL_WORKFLOWS, activities=activities),
        Worker(client, task_queue=queues["status"], activities=[recorder.publish_status]),
    ]
    async with workers[0], workers[1], workers[2]:
        yield


def _config(model: Path, data: Path, **overrides: Any) -> BertFineTuneConfig:
    settings: dict[str, Any] = {
        "model_name": str(model), "dataset_name": str(data), "dataset_config": None,
        "num_epochs": 1, "batch_size": 16, "learning_rate": 5e-5, "max_seq_length": 32,
        "save_steps": 8, "heartbeat_timeout_seconds": 10,
    }
    return BertFineTuneConfig(**(settings | overrides))


async def test_coordinator_trains_evaluates_reports_and_replays(
    temporal: TemporalHandle, minilm_path: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    queues, recorder = _queues(), StatusRecorder()
    target = StatusTarget(kind="BertExperiment", namespace="ns", name="exp", queue=queues["status"])
    request = CoordinatorWorkflowInput(
        configs=[CoordinatorWorkflowConfig(fine_tune=_config(minilm_path, sentiment_file,
                                                             run_id="e2e-run"))],
        training_queue=queues["training"], eval_queue=queues["eval"], status_target=target,
    )
    workflow_id = f"coordinator-{uuid.uuid4().hex[:8]}"
    client = temporal.client
    async with bert_workers(client, roots, queues, recorder):
        result = await client.execute_workflow(
            CoordinatorWorkflow.run, request, id=workflow_id, task_queue=queues["eval"],
            execution_timeout=timedelta(minutes=10),
        )
        run = result.runs[0]
        assert run.evaluation.accuracy > 0.8, run.evaluation  # chance is 0.5
        assert run.evaluation.num_examples == 40  # the 10 % held out of 400 rows
        run_dir = roots.runs / "e2e-run"
        assert (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file()
        assert checkpoint_dirs(run_dir), "no checkpoint-<step> directories"
        assert run.training.checkpoints_saved >= 2

        child = client.get_workflow_handle(f"{workflow_id}-train-0")
        latest = await child.query(CheckpointedBertTrainingWorkflow.get_latest_checkpoint)
        assert latest is not None and latest.step == run.training.global_step
        assert Path(latest.path).parent == run_dir

        inference_id = f"inference-{uuid.uuid4().hex[:8]}"
        inference = await client.execute_workflow(
            BertInferenceWorkflow.run,
            BertInferenceRequest(run_id="e2e-run",
                                 texts=["the film was wonderful", "the plot was dreadful"]),
            id=inference_id, task_queue=queues["eval"],
        )
        assert [p.label for p in inference.predictions] == [1, 0]

    phases = [u.phase for u in recorder.updates if u.phase is not None]
    assert phases[0] == Phase.PENDING and phases[-1] == Phase.SUCCEEDED
    assert Phase.TRAINING in phases and Phase.EVALUATING in phases
    assert any(u.latest_checkpoint is not None for u in recorder.updates)
    assert recorder.updates[-1].metrics["evalAccuracy"] == run.evaluation.accuracy  # type: ignore[index]

    # Determinism: every workflow's recorded history replays against the current code.
    workflow_ids = [workflow_id, f"{workflow_id}-train-0", f"{workflow_id}-eval-0", inference_id]
    histories = [await client.get_workflow_handle(w).fetch_history() for w in workflow_ids]
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    for history in histories:
        await replayer.replay_workflow(history)
