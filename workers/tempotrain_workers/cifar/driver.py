"""`python -m tempotrain_workers.cifar.driver JOB_FILE`: one scale as a Ray Train run.

Started by the `train_cifar10_scale` activity, as a subprocess next to the worker (local Ray
or a reachable Ray address) or as a Ray Job on the head node (KubeRay). It connects to Ray,
runs `TorchTrainer.fit()` and writes the result file; the exit code says what went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tempotrain_workers.api import LOCAL_RAY, CifarDataset, ScaleTrainRequest, ScaleTrainResult
from tempotrain_workers.cifar.layout import ScaleLayout
from tempotrain_workers.files import write_json_atomically

EXIT_FAILED = 1  # training failed after Ray Train's own retries: worth another attempt
EXIT_DEPENDENCY = 3  # ray/torch/torchvision missing: not retryable
EXIT_RAY_UNAVAILABLE = 4  # no Ray at the address after retries: not retryable
EXIT_STOPPED = 5  # SIGTERM: stopped on request
CONNECT_ATTEMPTS = 5
CONTROLLER_FAILURE_LIMIT = 3
OBJECT_STORE_BYTES = 256 * 1024**2  # a local Ray holds no datasets in its object store


class DriverJob(BaseModel):
    request: ScaleTrainRequest
    storage_path: str  # <runs>/<run_id>
    datasets_dir: str


def _connect(address: str, needed_cpus: int) -> None:
    import ray

    if address == LOCAL_RAY:
        # Logical CPUs: at least what the scale asks for, so a 2-worker scale runs on a
        # 1-core laptop too (slower, but the same code path as a real cluster). GPUs are
        # detected: a scale asking for more than the machine has fails instead of faking them.
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, needed_cpus),
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
        )
        return
    delay = 2.0
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address)
            return
        except Exception as err:  # ConnectionError, TimeoutError, ray's own exceptions
            print(f"connecting to Ray at {address} failed ({attempt}): {err}", file=sys.stderr)
            if attempt == CONNECT_ATTEMPTS:
                raise ConnectionError(f"Ray unreachable at {address}: {err}") from err
            time.sleep(delay)  # backoff between connection attempts, not synchronisation
            delay *= 2


def run(job: DriverJob) -> ScaleTrainResult:
    import ray.train
    from ray.train.torch import TorchTrainer

    from tempotrain_workers.cifar import data
    from tempotrain_workers.cifar.train_loop import train_loop_per_worker

    request = job.request
    layout = ScaleLayout(Path(job.storage_path), request.scale_name)
    layout.final_metrics_file.unlink(missing_ok=True)
    if request.dataset == CifarDataset.CIFAR10:
        data.download_cifar10(Path(job.datasets_dir) / "cifar10")
    scale = request.scale
    resources: dict[str, float] = {"CPU": scale.cpus_per_worker}
    if gpus := scale.gpus(request.use_gpu):
        resources["GPU"] = gpus
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scale.workers, use_gpu=request.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=request.scale_name,
            storage_path=job.storage_path,
            # Ray Train V2's FailureConfig (the stubs mypy sees are V1's).
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]
                max_failures=request.max_failures,
                # Not unlimited: workers that can never be placed (a scale larger than the
                # cluster) must end the run with an error, not retry silently forever.
                controller_failure_limit=CONTROLLER_FAILURE_LIMIT,
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.monotonic()
    result = trainer.fit()  # raises when training failed after Ray Train's own retries
    seconds = time.monotonic() - started
    metrics = json.loads(layout.final_metrics_file.read_text())
    return _result(request, layout, metrics, result.checkpoint, seconds)


def _result(
    request: ScaleTrainRequest,
    layout: ScaleLayout,
    metrics: dict[str, Any],
    checkpoint: Any,
    seconds: float,
) -> ScaleTrainResult:
    attempts = layout.attempts()
    resumed = [a["start_epoch"] for a in attempts if a["start_epoch"] > 0]
    return ScaleTrainResult(
        scale_index=request.scale_index,
        workers=request.scale.workers,
        epochs=int(metrics["epoch"]),
        test_accuracy=float(metrics["test_accuracy"]),
        training_seconds=round(seconds, 3),
        loop_seconds=round(float(metrics["loop_seconds"]), 3),
        images_per_second=round(float(metrics["images_per_second"]), 2),
        num_parameters=int(metrics["num_parameters"]),
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        restarts=max(0, len(attempts) - 1),
        resumed_epoch=resumed[-1] if resumed else None,
        parameter_digests=list(metrics["parameter_digests"]),
        gradient_sync_share=metrics.get("gradient_sync_share"),
        device=str(metrics.get("device", "cpu")),
    )


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(EXIT_STOPPED)  # unwinds through ray.shutdown() below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job_file", type=Path)
    parser.add_argument("--ray-address", help="override the job's address (Ray Jobs: auto)")
    args = parser.parse_args(argv)
    job = DriverJob.model_validate_json(args.job_file.read_text())
    layout = ScaleLayout(Path(job.storage_path), job.request.scale_name)
    signal.signal(signal.SIGTERM, _stop)
    # Ray Train V2: restores a run from its storage path + name, and is the default from 2.51.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    try:
        import ray
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as err:
        print(f"Ray Train needs ray[train], torch and torchvision: {err}", file=sys.stderr)
        return EXIT_DEPENDENCY
    scale = job.request.scale
    try:
        _connect(args.ray_address or job.request.ray_address, scale.workers * scale.cpus_per_worker)
    except ConnectionError as err:
        print(str(err), file=sys.stderr)
        return EXIT_RAY_UNAVAILABLE
    try:
        result = run(job)
    except Exception as err:
        print(f"scale {job.request.scale_name} failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        ray.shutdown()
    write_json_atomically(layout.result_file, result.model_dump(mode="json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
