"""Cifar10ScalingWorkflow on the real dev server, with real Ray Train DDP on a local Ray."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker
from tempotrain_workers.activities import RayScalingActivities, StorageRoots
from tempotrain_workers.api import (
    Cifar10ScalingInput,
    CifarDataset,
    Phase,
    RayScaleConfig,
    StatusTarget,
)
from tempotrain_workers.workflows import ALL_WORKFLOWS, Cifar10ScalingWorkflow

from tests.temporal.test_bert_workflows import StatusRecorder

if TYPE_CHECKING:
    from tests.conftest import TemporalHandle

pytestmark = pytest.mark.temporal
HISTORY = Path(__file__).parent / "histories" / "cifar10-scaling.json"
HISTORY_ID = "cifar10-scaling-recorded"


async def test_one_and_two_workers_train_compare_and_report(
    temporal: TemporalHandle, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    ray_queue, status_queue = f"ray-{suffix}", f"op-{suffix}"
    recorder = StatusRecorder()
    request = Cifar10ScalingInput(
        experiment_name="scaling-test",
        run_id="scaling-test",
        scales=[RayScaleConfig(workers=n, epochs=1, batch_size=64) for n in (1, 2)],
        dataset=CifarDataset.SYNTHETIC,
        synthetic_size=2048,
        status_target=StatusTarget(
            kind="Cifar10Scaling", namespace="ns", name="scaling-test", queue=status_queue
        ),
    )
    client = temporal.client
    activities = RayScalingActivities(StorageRoots(tmp_path / "snapshots", tmp_path / "runs"))
    workflow_id = f"cifar10scaling-{suffix}"
    async with (
        Worker(client, task_queue=ray_queue, workflows=ALL_WORKFLOWS, activities=activities.all()),
        Worker(client, task_queue=status_queue, activities=[recorder.publish_status]),
    ):
        result = await client.execute_workflow(
            Cifar10ScalingWorkflow.run,
            request,
            id=workflow_id,
            task_queue=ray_queue,
            execution_timeout=timedelta(minutes=10),
        )
        history = await client.get_workflow_handle(workflow_id).fetch_history()

    one, two = result.runs
    assert (one.workers, two.workers) == (1, 2)
    # Real DDP: after the epoch every rank holds the very same weights ...
    assert len(two.parameter_digests) == 2
    assert len(set(two.parameter_digests)) == 1, two.parameter_digests
    # ... and the doubled global batch (with the learning rate scaled to it) learns as well.
    assert one.test_accuracy > 0.5, one  # chance is 0.1
    assert abs(two.test_accuracy - one.test_accuracy) <= 0.02, (one, two)
    for run in result.runs:
        assert run.images_per_second > 0 and run.checkpoint_path
        assert Path(run.checkpoint_path).is_dir()
        assert run.restarts == 0

    baseline, scaled = result.scales
    assert baseline.speedup == 1.0 and baseline.efficiency == 1.0
    expected = two.images_per_second / one.images_per_second
    assert scaled.speedup == pytest.approx(expected, abs=1e-3)
    assert scaled.efficiency == pytest.approx(expected / 2, abs=1e-3)

    current = [u.current_scale for u in recorder.updates if u.current_scale is not None]
    assert current == sorted(current) and current[-1] == 2
    reported = [len(u.scale_results) for u in recorder.updates if u.scale_results is not None]
    assert reported[-1] == 2
    assert recorder.updates[-1].phase == Phase.SUCCEEDED

    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
    if os.environ.get("TEMPOTRAIN_RECORD_HISTORIES"):
        recorded = json.loads(history.to_json())
        HISTORY.write_text(json.dumps(recorded))


async def test_committed_scaling_history_still_replays() -> None:
    history = WorkflowHistory.from_json(HISTORY_ID, HISTORY.read_text())
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
