"""A sweep against single runs, and what a worker kill costs its trials.

1. Two single experiments, one after the other (each trains and evaluates), on one worker.
2. A 4-trial sweep with `maxParallel: 2` on two workers (two trainers, as two training pods).
   Printed: sweep wall time ÷ the two sequential runs' (goal: about 1.0 — four trainings in
   the time of two, when there are cores for two trainers).
3. The same sweep again; once both trainers are stepping, one worker is SIGKILLed and
   restarted. Printed: recomputed steps per interrupted trial ÷ save interval (goal <= 1.0).

The workflows are the operator's (`coordinator_input` from a BertExperimentSpec), started
straight on Temporal: what is measured is the sweep, not Kubernetes.

    .venv/bin/python bench/sweep.py [--save-steps 6] [--samples 240] [--threads-per-trainer N]

Each trainer gets `--threads-per-trainer` CPU threads (default: the cores ÷ 2), single runs
included: two trainers sharing the cores, each with as many threads as there are cores, only
slow each other down (in a pod, set OMP_NUM_THREADS to its CPU request for the same reason).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import (
    attempt_job,
    minilm_path,
    reached_step,
    start_worker,
    temporal_server,
    wait_until_polled,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from tempotrain_dev.processes import pids_running
from tempotrain_dev.waiting import wait_for
from tempotrain_operator.mapping import coordinator_input
from tempotrain_workers.api import BertExperimentSpec, CoordinatorWorkflowInput
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.workflows import CoordinatorWorkflow

LEARNING_RATES = [3e-5, 5e-5]
BATCH_SIZES = [8, 16]


def spec(samples: int, save_steps: int, sweep: dict[str, Any] | None) -> BertExperimentSpec:
    return BertExperimentSpec.model_validate(
        {
            "model": {"name": "models/minilm"},
            "dataset": {"file": "data.jsonl", "maxTrainSamples": samples, "maxEvalSamples": 64},
            "training": {
                "epochs": 1,
                "batchSize": 8,
                "learningRate": LEARNING_RATES[0],
                "maxSeqLength": 32,
                "saveSteps": save_steps,
            },
            **({"sweep": sweep} if sweep else {}),
        }
    )


def workflow_input(name: str, model: BertExperimentSpec, queue: str) -> CoordinatorWorkflowInput:
    request = coordinator_input(name, "bench", uuid.uuid4().hex, model, queue, queue, queue)
    return request.model_copy(update={"status_target": None})  # no operator: no status pushes


async def run(client: Client, request: CoordinatorWorkflowInput, queue: str) -> float:
    started = time.monotonic()
    await client.execute_workflow(
        CoordinatorWorkflow.run, request, id=f"bench-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    return time.monotonic() - started


async def bench(address: str, root: Path, samples: int, save_steps: int) -> None:
    write_sentiment_jsonl(root / "snapshots" / "data.jsonl", samples + 100)
    (root / "snapshots" / "models").mkdir(parents=True, exist_ok=True)
    (root / "snapshots" / "models" / "minilm").symlink_to(minilm_path())
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    queue = f"sweep-{uuid.uuid4().hex[:8]}"
    log = root / "workers.log"
    workers = [start_worker(address, [queue], root, log) for _ in range(2)]
    await wait_until_polled(client, queue)
    grid = {"learningRate": LEARNING_RATES, "batchSize": BATCH_SIZES}
    try:
        # 1. Two single runs in a row (the second worker idles: a single run trains on one).
        sequential = 0.0
        for i, rate in enumerate(LEARNING_RATES):
            single = spec(samples, save_steps, None)
            single = single.model_copy(
                update={"training": single.training.model_copy(update={"learning_rate": rate})}
            )
            sequential += await run(client, workflow_input(f"single-{i}", single, queue), queue)
        print(f"2 single runs, one after the other: {sequential:.1f} s")

        # 2. Four trials, two at a time.
        sweep = spec(samples, save_steps, {"grid": grid, "maxParallel": 2})
        wall = await run(client, workflow_input("sweep", sweep, queue), queue)
        print(f"4-trial sweep, maxParallel 2: {wall:.1f} s")
        print(
            f"sweep wall time / 2 sequential single runs: {wall / sequential:.2f}   "
            "(goal about 1.0: 4 trainings in the time of 2)"
        )

        # 3. A worker killed while two trials train.
        request = workflow_input("killed", sweep, queue)
        handle = await client.start_workflow(
            CoordinatorWorkflow.run, request, id=f"bench-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        run_dirs = [
            root / "runs" / c.fine_tune.run_id for c in request.configs if c.fine_tune.run_id
        ]
        await asyncio.to_thread(
            wait_for,
            lambda: sum(reached_step(d) > save_steps for d in run_dirs) >= 2,
            timeout=600,
            what="two trials past their first checkpoint",
        )
        victim = workers.pop(0)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        def trainers() -> int:
            return sum(
                bool(pids_running("tempotrain_workers.trainer_main", str(d))) for d in run_dirs
            )

        # Its trainer dies with it (PDEATHSIG); read the steps once it is gone.
        await asyncio.to_thread(
            wait_for, lambda: trainers() < 2, timeout=30, what="the killed worker's trainer to exit"
        )
        reached = {d: reached_step(d) for d in run_dirs}
        workers.append(start_worker(address, [queue], root, log))
        await handle.result()
        recomputed = []
        for run_dir in run_dirs:
            resumed = attempt_job(run_dir, 2)  # the killed trial's next attempt
            if resumed is not None:
                recomputed.append(reached[run_dir] - (resumed.resumed_from_step or 0))
        print(f"interrupted trials: {len(recomputed)}; recomputed steps: {recomputed}")
        if recomputed:
            print(
                f"recomputed steps per interrupted trial / save interval: "
                f"{statistics.mean(recomputed) / save_steps:.2f}   (goal <= 1.0; worst "
                f"{max(recomputed) / save_steps:.2f})"
            )
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--save-steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=240, help="training examples per run")
    parser.add_argument(
        "--threads-per-trainer", type=int, default=max(1, (os.cpu_count() or 2) // 2)
    )
    args = parser.parse_args()
    # Inherited by the workers and their trainers (torch reads it when it starts).
    os.environ["OMP_NUM_THREADS"] = str(args.threads_per_trainer)
    print(f"{os.cpu_count()} cores, {args.threads_per_trainer} thread(s) per trainer")
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp, temporal_server() as address:
        asyncio.run(bench(address, Path(tmp), args.samples, args.save_steps))


if __name__ == "__main__":
    main()
