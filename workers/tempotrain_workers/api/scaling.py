"""Contract of the CIFAR-10 data-parallel scaling experiment (DESIGN.md §5).

One `train_cifar10_scale` activity per scale runs Ray Train DDP; the workflow compares the
scales' throughput against the 1-worker baseline. Pydantic only: no torch, no ray.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tempotrain_workers.api.base import Contract, RunId, StatusTarget

DEFAULT_SYNTHETIC_SIZE = 2048
LOCAL_RAY = "local"  # a Ray runtime started on the worker's own machine for each scale


class CifarDataset(StrEnum):
    CIFAR10 = "cifar10"  # torchvision download, cached under the datasets root
    SYNTHETIC = "synthetic"  # generated from the seed: learnable, no I/O


class CifarModel(StrEnum):
    SIMPLE_CNN = "simple_cnn"
    RESNET18 = "resnet18"


class RayScaleConfig(Contract):
    workers: int = Field(ge=1, le=256, description="Ray Train workers (DDP ranks)")
    epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=1, le=8192, description="per worker")
    gpus_per_worker: int = Field(default=0, ge=0, le=16, description="0 with use_gpu: 1")
    cpus_per_worker: int = Field(default=1, ge=1, le=256)

    def gpus(self, use_gpu: bool) -> int:
        return effective_gpus(self.gpus_per_worker, use_gpu)


def effective_gpus(gpus_per_worker: int, use_gpu: bool) -> int:
    """GPUs each worker gets: Ray Train gives a `use_gpu` worker one GPU unless told more, so
    the RayCluster's pods must offer at least that."""
    return gpus_per_worker or (1 if use_gpu else 0)


class ScaleTrainRequest(Contract):
    """One scale: a Ray Train run named `scale-<index>-<workers>w` under `<runs>/<run_id>/`."""

    run_id: RunId
    scale_index: int = Field(ge=0)
    scale: RayScaleConfig
    dataset: CifarDataset = CifarDataset.SYNTHETIC
    synthetic_size: int = Field(default=DEFAULT_SYNTHETIC_SIZE, ge=64, le=1_000_000)
    model: CifarModel = CifarModel.SIMPLE_CNN
    use_gpu: bool = False
    seed: int = Field(default=42, ge=0)
    # For one worker; scaled linearly with the worker count (the global batch grows with it).
    learning_rate: float = Field(default=0.02, gt=0, lt=10)
    ray_address: str = Field(default=LOCAL_RAY, min_length=1)
    max_failures: int = Field(default=2, ge=0, le=100, description="Ray Train FailureConfig")
    runs_root: str | None = None  # default: the worker's --runs-root
    datasets_root: str | None = None  # default: <the worker's --snapshots-root>/datasets
    # > 0: after training, time this many steps with and without gradient all-reduce.
    sync_probe_steps: int = Field(default=0, ge=0, le=1000)
    heartbeat_timeout_seconds: int = Field(default=120, ge=10, le=3600)

    @property
    def scale_name(self) -> str:
        return f"scale-{self.scale_index}-{self.scale.workers}w"

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ScaleTrainRequest:
        if self.scale.gpus_per_worker > 0 and not self.use_gpu:
            raise ValueError("gpus_per_worker > 0 needs use_gpu")
        return self


class ScaleTrainResult(Contract):
    scale_index: int
    workers: int
    epochs: int
    test_accuracy: float = Field(ge=0, le=1)
    training_seconds: float  # wall clock of the whole Ray Train run, start-up included
    loop_seconds: float  # time inside the training loops only (what throughput is based on)
    images_per_second: float
    num_parameters: int
    checkpoint_path: str | None
    restarts: int = Field(ge=0)  # times the worker group restarted (Ray Train or Temporal)
    resumed_epoch: int | None  # the epoch training last resumed from, if it ever did
    parameter_digests: list[str]  # sha256 of each rank's parameters after the last epoch
    gradient_sync_share: float | None = None  # share of a step spent in the all-reduce
    device: str


class ScaleOutcome(Contract):
    """A finished scale, compared with the baseline (the 1-worker scale, else the smallest)."""

    # Also a row of the CR's `.status.results`: camelCase on the wire, either name accepted.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    workers: int
    test_accuracy: float
    training_seconds: float
    images_per_second: float
    speedup: float
    efficiency: float
    num_parameters: int
    checkpoint_path: str | None = None
    restarts: int = 0
    resumed_epoch: int | None = None


def compare_scales(results: list[ScaleTrainResult]) -> list[ScaleOutcome]:
    """speedup = images/s over the baseline's; efficiency = speedup per added worker."""
    if not results:
        return []
    baseline = min(results, key=lambda r: (r.workers != 1, r.workers))
    outcomes = []
    for result in results:
        speedup = (
            result.images_per_second / baseline.images_per_second
            if baseline.images_per_second > 0
            else 0.0
        )
        outcomes.append(
            ScaleOutcome(
                workers=result.workers,
                test_accuracy=result.test_accuracy,
                training_seconds=result.training_seconds,
                images_per_second=result.images_per_second,
                speedup=round(speedup, 4),
                efficiency=round(speedup * baseline.workers / result.workers, 4),
                num_parameters=result.num_parameters,
                checkpoint_path=result.checkpoint_path,
                restarts=result.restarts,
                resumed_epoch=result.resumed_epoch,
            )
        )
    return outcomes


class Cifar10ScalingInput(Contract):
    experiment_name: str = Field(min_length=1, max_length=253)
    run_id: RunId
    scales: list[RayScaleConfig] = Field(min_length=1, max_length=32)
    dataset: CifarDataset = CifarDataset.SYNTHETIC
    synthetic_size: int = Field(default=DEFAULT_SYNTHETIC_SIZE, ge=64, le=1_000_000)
    model: CifarModel = CifarModel.SIMPLE_CNN
    use_gpu: bool = False
    random_seed: int = Field(default=42, ge=0)
    learning_rate: float = Field(default=0.02, gt=0, lt=10)
    ray_address: str = Field(default=LOCAL_RAY, min_length=1)
    max_failures: int = Field(default=2, ge=0, le=100)
    status_target: StatusTarget | None = None

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> Cifar10ScalingInput:
        if not self.use_gpu and any(s.gpus_per_worker > 0 for s in self.scales):
            raise ValueError("a scale asks for gpus_per_worker > 0 but use_gpu is false")
        return self

    def request_for(self, index: int) -> ScaleTrainRequest:
        return ScaleTrainRequest(
            run_id=self.run_id,
            scale_index=index,
            scale=self.scales[index],
            dataset=self.dataset,
            synthetic_size=self.synthetic_size,
            model=self.model,
            use_gpu=self.use_gpu,
            seed=self.random_seed,
            learning_rate=self.learning_rate,
            ray_address=self.ray_address,
            max_failures=self.max_failures,
        )


class Cifar10ScalingResult(Contract):
    experiment_name: str
    run_id: str
    scales: list[ScaleOutcome]
    runs: list[ScaleTrainResult]
