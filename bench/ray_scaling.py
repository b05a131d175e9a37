"""Ray Train data-parallel scaling: images/s of 1 and 2 DDP workers, and the share of a
training step spent synchronising gradients.

Each scale runs exactly as a Cifar10Scaling scale does (the `train_cifar10_scale` activity:
driver subprocess, local Ray, TorchTrainer). Throughput counts training-loop time only, so
Ray start-up and evaluation do not dilute it. The sync share times the same batches with
DDP's all-reduce and under `no_sync()` (forward + backward, gradients discarded).

    .venv/bin/python bench/ray_scaling.py [--model simple_cnn] [--size 4096] [--epochs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from temporalio.testing import ActivityEnvironment
from tempotrain_workers.activities import RayScalingActivities, StorageRoots
from tempotrain_workers.api import (
    CifarDataset,
    CifarModel,
    RayScaleConfig,
    ScaleTrainRequest,
    ScaleTrainResult,
)


async def run_scale(
    root: Path, index: int, workers: int, args: argparse.Namespace
) -> ScaleTrainResult:
    request = ScaleTrainRequest(
        run_id="bench",
        scale_index=index,
        scale=RayScaleConfig(workers=workers, epochs=args.epochs, batch_size=args.batch_size),
        dataset=CifarDataset.SYNTHETIC,
        synthetic_size=args.size,
        model=CifarModel(args.model),
        sync_probe_steps=args.probe_steps,
    )
    activities = RayScalingActivities(StorageRoots(root / "snapshots", root / "runs"))
    return await ActivityEnvironment().run(activities.train_cifar10_scale, request)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="simple_cnn", choices=[m.value for m in CifarModel])
    parser.add_argument("--size", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--probe-steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tempotrain-ray-bench-") as state:
        root = Path(state)
        one = await run_scale(root, 0, 1, args)
        two = await run_scale(root, 1, 2, args)
    cores = os.cpu_count() or 1
    print(f"machine: {cores} CPU cores; model {args.model}; {args.size} images x {args.epochs}")
    for result in (one, two):
        print(
            f"{result.workers} worker(s): {result.images_per_second:8.1f} images/s "
            f"(loop {result.loop_seconds:.1f} s, whole run {result.training_seconds:.1f} s, "
            f"test accuracy {result.test_accuracy:.3f})"
        )
    ratio = two.images_per_second / one.images_per_second
    print(f"throughput 2 workers / 1 worker: {ratio:.2f} (ideal 2.00; efficiency {ratio / 2:.2f})")
    share = two.gradient_sync_share
    print(
        "gradient all-reduce share of a 2-worker step: "
        + (f"{share:.2f}" if share is not None else "n/a")
    )
    overhead = one.loop_seconds / one.training_seconds
    print(f"training-loop share of the 1-worker run's wall clock: {overhead:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
