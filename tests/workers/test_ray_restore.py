"""The `train_cifar10_scale` activity with real Ray Train: crash recovery and clear errors."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from tempotrain_workers.activities import RayScalingActivities, StorageRoots
from tempotrain_workers.api import CifarDataset, RayScaleConfig, ScaleTrainRequest
from tempotrain_workers.cifar.layout import ScaleLayout
from tempotrain_workers.scale_supervisor import RAY_UNAVAILABLE_ATTEMPTS

from tests.support import eventually


def _request(**overrides: object) -> ScaleTrainRequest:
    settings: dict[str, object] = {
        "run_id": "restore-test",
        "scale_index": 0,
        "scale": RayScaleConfig(workers=2, epochs=4, batch_size=64),
        "dataset": CifarDataset.SYNTHETIC,
        "synthetic_size": 2048,
        "max_failures": 2,
    }
    return ScaleTrainRequest.model_validate(settings | overrides)


async def test_killed_train_worker_is_restored_from_the_last_epoch_checkpoint(
    tmp_path: Path,
) -> None:
    request = _request()
    activities = RayScalingActivities(StorageRoots(tmp_path / "snapshots", tmp_path / "runs"))
    layout = ScaleLayout(tmp_path / "runs" / request.run_id, request.scale_name)
    training = asyncio.create_task(
        ActivityEnvironment().run(activities.train_cifar10_scale, request)
    )

    async def first_epoch_saved() -> int | None:
        checkpoints = layout.ray_checkpoints()
        pid_file = layout.pid_file(1)
        return int(pid_file.read_text()) if checkpoints and pid_file.is_file() else None

    victim = await eventually(first_epoch_saved, within=240, what="the first epoch checkpoint")
    os.kill(victim, signal.SIGKILL)  # a Ray Train worker process, mid-run
    result = await asyncio.wait_for(training, timeout=300)

    assert result.epochs == 4
    assert result.restarts >= 1, layout.attempts()
    assert result.resumed_epoch is not None and 1 <= result.resumed_epoch < 4
    assert len(set(result.parameter_digests)) == 1  # the new group is in sync again
    assert result.test_accuracy > 0.5
    restarted_from = [a["start_epoch"] for a in layout.attempts()]
    assert restarted_from[0] == 0 and restarted_from[-1] == result.resumed_epoch


async def test_unreachable_ray_jobs_api_is_retried_then_given_up(tmp_path: Path) -> None:
    request = _request(ray_address="http://127.0.0.1:9")  # discard port: nothing listens
    activities = RayScalingActivities(StorageRoots(tmp_path / "snapshots", tmp_path / "runs"))
    environment = ActivityEnvironment()
    with pytest.raises(ApplicationError) as early:  # a head pod may just be restarting
        await environment.run(activities.train_cifar10_scale, request)
    assert (early.value.type, early.value.non_retryable) == ("RayUnreachable", False)

    environment.info = dataclasses.replace(environment.info, attempt=RAY_UNAVAILABLE_ATTEMPTS)
    with pytest.raises(ApplicationError) as final:
        await environment.run(activities.train_cifar10_scale, request)
    assert (final.value.type, final.value.non_retryable) == ("RayUnavailable", True)
    assert "no Ray Jobs API at http://127.0.0.1:9" in str(final.value)
