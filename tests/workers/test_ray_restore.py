"""The `train_cifar10_scale` activity: clear errors when Ray cannot be reached. (Crash
recovery, a Ray worker killed mid-scale and restored from its epoch checkpoint, is tested in
real pods: tests/e2e/test_scaling_pods.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from tempotrain_workers.activities import RayScalingActivities, StorageRoots
from tempotrain_workers.api import CifarDataset, RayScaleConfig, ScaleTrainRequest
from tempotrain_workers.scale_supervisor import RAY_UNAVAILABLE_ATTEMPTS


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
