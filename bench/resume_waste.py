"""Work lost per crash: SIGKILL the training worker at random points, restart it, measure.

For each kill, recomputed steps = the step the killed trainer had reached - the step the
next attempt resumed from. Prints recomputed steps per kill / save interval (goal <= 1.0).

    .venv/bin/python bench/resume_waste.py [--kills 4] [--save-steps 10] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import tempfile
import uuid
from pathlib import Path

from _harness import attempt_job, minilm_path, reached_step, start_worker, temporal_server
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from tempotrain_dev.processes import pids_running
from tempotrain_dev.waiting import wait_for
from tempotrain_workers.api import BertFineTuneConfig, BertTrainingInput
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.workflows import CheckpointedBertTrainingWorkflow


def _resumed_from(run_dir: Path, attempt: int) -> int:
    job = attempt_job(run_dir, attempt)
    assert job is not None, f"attempt {attempt} never ran"
    return job.resumed_from_step or 0


async def bench(address: str, root: Path, kills: int, save_steps: int, seed: int) -> None:
    rng = random.Random(seed)
    data = write_sentiment_jsonl(root / "data.jsonl", 1200)
    config = BertFineTuneConfig(
        run_id="waste",
        model_name=str(minilm_path()),
        dataset_name=str(data),
        dataset_config=None,
        num_epochs=2,
        batch_size=8,
        learning_rate=5e-5,
        max_seq_length=32,
        save_steps=save_steps,
        heartbeat_timeout_seconds=5,
    )
    queue = f"waste-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    handle = await client.start_workflow(
        CheckpointedBertTrainingWorkflow.run,
        BertTrainingInput(config=config, snapshot_queue=queue),
        id=f"waste-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    run_dir = root / "runs" / "waste"
    log = root / "worker.log"
    wasted: list[int] = []
    for kill in range(1, kills + 1):
        worker = start_worker(address, [queue], root, log)
        start_step = reached_step(run_dir)
        await asyncio.to_thread(
            wait_for,
            lambda s=start_step: reached_step(run_dir) > s + 1,
            timeout=300,
            what="training to progress",
        )
        await asyncio.sleep(rng.uniform(2.0, 12.0))  # the crash point: random wall time
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # The trainer dies with its worker (PDEATHSIG); read its progress once it is gone.
        await asyncio.to_thread(
            wait_for,
            lambda: not pids_running("tempotrain_workers.trainer_main", str(run_dir)),
            timeout=30,
            what="the trainer to exit",
        )
        reached = reached_step(run_dir)
        wasted.append(reached)
        print(f"kill {kill}: trainer had reached step {reached}")
    worker = start_worker(address, [queue], root, log)
    try:
        result = await handle.result()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    recomputed = [
        reached - _resumed_from(run_dir, attempt + 2) for attempt, reached in enumerate(wasted)
    ]
    print(
        f"completed: {result.global_step}/{result.total_steps} steps, "
        f"resumed_from_step={result.resumed_from_step}"
    )
    print(f"recomputed steps per kill: {recomputed}")
    ratio = statistics.mean(recomputed) / save_steps
    print(
        f"recomputed steps per kill / save interval: {ratio:.2f}   (goal <= 1.0; "
        f"worst {max(recomputed) / save_steps:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resume-waste-") as tmp, temporal_server() as address:
        asyncio.run(bench(address, Path(tmp), args.kills, args.save_steps, args.seed))


if __name__ == "__main__":
    main()
