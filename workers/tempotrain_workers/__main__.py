"""`python -m tempotrain_workers --queue ...`: run Temporal workers until SIGTERM/SIGINT.

On shutdown, running activities are cancelled at once: the trainer saves a checkpoint and
exits, and the retried activity resumes from it on another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import timedelta

from temporalio.worker import Worker

from tempotrain_workers import metrics
from tempotrain_workers.activities import (
    BertActivities,
    InferenceActivities,
    RayScalingActivities,
    StorageRoots,
)
from tempotrain_workers.api import (
    INFERENCE_QUEUE,
    RAY_QUEUE,
    TRAINING_QUEUE,
    worker_concurrency,
)
from tempotrain_workers.health import HealthServer
from tempotrain_workers.ml_imports import import_ml_stack
from tempotrain_workers.settings import WorkerSettings, parse_worker_settings
from tempotrain_workers.workflows import ALL_WORKFLOWS

log = logging.getLogger("tempotrain_workers")


async def run_workers(settings: WorkerSettings, stop: asyncio.Event) -> None:
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    health = HealthServer(settings.health_port) if settings.health_port else None
    if health is not None:  # live from the start: connecting may take a while
        await health.start()
    try:
        await _run(settings, stop, health)
    finally:
        if health is not None:
            await health.stop()


def default_concurrency(queue: str) -> int:
    if queue.startswith(INFERENCE_QUEUE):
        return worker_concurrency(1)  # a host worker's one device (the operator's pods: --max-…)
    return 1 if queue.startswith((TRAINING_QUEUE, RAY_QUEUE)) else 8


async def _run(settings: WorkerSettings, stop: asyncio.Event, health: HealthServer | None) -> None:
    client = await settings.temporal.connect()
    settings.snapshots_root.mkdir(parents=True, exist_ok=True)
    settings.runs_root.mkdir(parents=True, exist_ok=True)
    roots = StorageRoots(settings.snapshots_root, settings.runs_root)
    activities = [
        *BertActivities(roots).all(),
        *RayScalingActivities(roots).all(),
        *InferenceActivities(roots).all(),
    ]
    workers = [
        Worker(
            client,
            task_queue=queue,
            workflows=ALL_WORKFLOWS,
            activities=activities,
            max_concurrent_activities=settings.max_concurrent_activities
            or default_concurrency(queue),
            graceful_shutdown_timeout=timedelta(seconds=0),
            # Cancellation reaches an activity on a heartbeat reply: keep that within seconds,
            # so a deleted experiment stops (and checkpoints) promptly.
            max_heartbeat_throttle_interval=timedelta(seconds=5),
            default_heartbeat_throttle_interval=timedelta(seconds=5),
            interceptors=[metrics.CountFailures()],
        )
        for queue in settings.queues
    ]
    # Import the ML stack while polling starts, so the first job does not pay for it.
    warming = asyncio.create_task(asyncio.to_thread(import_ml_stack))
    log.info(
        "polling %s at %s (snapshots %s, runs %s)",
        ", ".join(settings.queues),
        settings.temporal.address,
        settings.snapshots_root,
        settings.runs_root,
    )
    running = [asyncio.create_task(w.run()) for w in workers]
    if health is not None:
        health.ready = True  # connected, and the pollers run until one of these returns
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*running, stopped], return_when=asyncio.FIRST_COMPLETED)
    if health is not None:
        health.ready = False
    log.info("shutting down")
    await asyncio.gather(*(w.shutdown() for w in workers))
    warming.cancel()
    for task in done:
        if task is not stopped and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = parse_worker_settings(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_workers(settings, stop)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
