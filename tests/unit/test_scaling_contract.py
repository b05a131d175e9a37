"""The CIFAR-10 scaling contract: the comparison against the baseline scale, and the
workflow input's own rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tempotrain_workers.api import (
    Cifar10ScalingInput,
    CifarDataset,
    CifarModel,
    RayScaleConfig,
    ScaleOutcome,
    ScaleTrainRequest,
    ScaleTrainResult,
    compare_scales,
)


def _result(
    index: int, workers: int, images_per_second: float, **fields: object
) -> ScaleTrainResult:
    values: dict[str, object] = {
        "scale_index": index,
        "workers": workers,
        "epochs": 2,
        "test_accuracy": 0.5 + index / 100,
        "training_seconds": 100.0 / workers,
        "loop_seconds": 90.0 / workers,
        "images_per_second": images_per_second,
        "num_parameters": 1234,
        "checkpoint_path": f"/data/runs/r/scale-{index}-{workers}w/checkpoint",
        "restarts": 0,
        "resumed_epoch": None,
        "parameter_digests": ["d"] * workers,
        "device": "cpu",
    }
    return ScaleTrainResult.model_validate(values | fields)


def _input(**fields: object) -> Cifar10ScalingInput:
    values: dict[str, object] = {
        "experiment_name": "exp",
        "run_id": "exp",
        "scales": [{"workers": 1}, {"workers": 2}],
    }
    return Cifar10ScalingInput.model_validate(values | fields)


def test_no_results_compare_to_nothing() -> None:
    assert compare_scales([]) == []


def test_the_one_worker_scale_is_the_baseline_wherever_it_is_listed() -> None:
    results = [_result(0, 4, 300.0), _result(1, 2, 180.0), _result(2, 1, 100.0)]
    outcomes = compare_scales(results)
    assert [o.workers for o in outcomes] == [4, 2, 1]  # the order of the scales is kept
    assert [o.speedup for o in outcomes] == [3.0, 1.8, 1.0]
    assert [o.efficiency for o in outcomes] == [0.75, 0.9, 1.0]


def test_without_a_one_worker_scale_the_smallest_is_the_baseline() -> None:
    outcomes = compare_scales([_result(0, 8, 500.0), _result(1, 2, 200.0), _result(2, 4, 300.0)])
    assert [o.workers for o in outcomes] == [8, 2, 4]
    assert [o.speedup for o in outcomes] == [2.5, 1.0, 1.5]
    # Efficiency is relative to the baseline's own workers: 2.5x from 4x the workers.
    assert [o.efficiency for o in outcomes] == [0.625, 1.0, 0.75]


def test_speedup_and_efficiency_are_rounded_to_four_places() -> None:
    baseline, three = compare_scales([_result(0, 1, 300.0), _result(1, 3, 700.0)])
    assert (baseline.speedup, baseline.efficiency) == (1.0, 1.0)
    assert (three.speedup, three.efficiency) == (2.3333, 0.7778)


def test_an_outcome_carries_the_result_it_compares() -> None:
    result = _result(1, 2, 150.0, restarts=2, resumed_epoch=1, checkpoint_path=None)
    baseline, outcome = compare_scales([_result(0, 1, 100.0), result])
    assert outcome == ScaleOutcome(
        workers=2,
        test_accuracy=result.test_accuracy,
        training_seconds=result.training_seconds,
        images_per_second=150.0,
        speedup=1.5,
        efficiency=0.75,
        num_parameters=1234,
        checkpoint_path=None,
        restarts=2,
        resumed_epoch=1,
    )
    assert baseline.checkpoint_path == "/data/runs/r/scale-0-1w/checkpoint"


def test_gpus_per_worker_needs_use_gpu() -> None:
    scales = [{"workers": 1}, {"workers": 2, "gpus_per_worker": 1}]
    with pytest.raises(ValidationError, match="use_gpu is false"):
        _input(scales=scales)
    assert _input(scales=scales, use_gpu=True).scales[1].gpus_per_worker == 1
    # The per-scale request holds the same rule on its own.
    with pytest.raises(ValidationError, match="needs use_gpu"):
        ScaleTrainRequest(
            run_id="exp", scale_index=0, scale=RayScaleConfig(workers=1, gpus_per_worker=1)
        )


def test_scales_cannot_be_empty() -> None:
    with pytest.raises(ValidationError, match="scales"):
        _input(scales=[])


@pytest.mark.parametrize(
    "fields",
    [
        {"run_id": "Has/Slash"},
        {"scales": [{"workers": 0}]},
        {"synthetic_size": 10},
        {"learning_rate": 0},
        {"unknown": 1},
    ],
    ids=["run-id", "zero-workers", "tiny-synthetic", "zero-lr", "extra-field"],
)
def test_malformed_inputs_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _input(**fields)


def test_request_for_copies_the_experiment_and_picks_one_scale() -> None:
    experiment = _input(
        scales=[
            {"workers": 1},
            {"workers": 4, "epochs": 5, "batch_size": 32, "gpus_per_worker": 2},
        ],
        dataset="cifar10",
        synthetic_size=4096,
        model="resnet18",
        use_gpu=True,
        random_seed=7,
        learning_rate=0.1,
        ray_address="http://exp-ray-head-svc.ns.svc.cluster.local:8265",
        max_failures=5,
    )
    request = experiment.request_for(1)
    assert request.run_id == "exp"
    assert request.scale_index == 1
    assert request.scale == RayScaleConfig(workers=4, epochs=5, batch_size=32, gpus_per_worker=2)
    assert (request.dataset, request.synthetic_size, request.model) == (
        CifarDataset.CIFAR10,
        4096,
        CifarModel.RESNET18,
    )
    assert request.use_gpu is True
    assert request.seed == 7
    assert request.learning_rate == 0.1
    assert request.ray_address == "http://exp-ray-head-svc.ns.svc.cluster.local:8265"
    assert request.max_failures == 5
    # Left to the worker's own defaults.
    assert request.runs_root is None and request.datasets_root is None
    assert experiment.request_for(0).scale == RayScaleConfig(workers=1)
    with pytest.raises(IndexError):
        experiment.request_for(2)


def test_scale_name_names_the_index_and_the_workers() -> None:
    request = ScaleTrainRequest(run_id="exp", scale_index=2, scale=RayScaleConfig(workers=8))
    assert request.scale_name == "scale-2-8w"
    assert _input().request_for(0).scale_name == "scale-0-1w"
    assert _input().request_for(1).scale_name == "scale-1-2w"
