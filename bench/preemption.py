"""Preemption under Kueue: what it costs a running experiment, and how soon its quota serves
the one that preempted it. Local platform (its Kueue, kwok GPU nodes, a host worker).

A ClusterQueue with 1 GPU. A low-priority BertExperiment ("victim", MiniLM) trains; --count
(3) times, once it has trained past where it last resumed, a high-priority one ("urgent-i",
a tiny BERT, 1 epoch) is applied: Kueue preempts the victim, which saves a checkpoint, stops
and is given back; the urgent one is admitted, runs and finishes; the victim is admitted
again and resumes. Per preemption:

- steps lost: the step the victim had reached when it stopped, minus the step its next
  attempt resumed from (goal 0);
- seconds from the preemption (the victim's Workload Evicted) to the freed quota being
  admitted elsewhere (the urgent one's Workload Admitted);
- seconds from the preemption to the victim held (phase Queued) and from the urgent one's
  end to the victim training again.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/preemption.py [--count 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from _harness import minilm_path
from _operator_harness import Bench, bench_platform
from operator_latency import manifest
from resume_waste import _reached, _resumed_from
from tempotrain_operator.queueing import QUEUE_LABEL
from tempotrain_workers.sample_data import write_sentiment_jsonl, write_tiny_bert

RESOURCE = "bertexperiments.tempotrain.dev"
QUEUE = "gpus"
POLL = 0.25
T = TypeVar("T")


@dataclass
class Preemption:
    steps_lost: int
    to_admitted: float  # victim Evicted -> urgent Admitted
    to_held: float  # victim Evicted -> victim Queued
    to_resumed: float  # urgent Succeeded -> victim training again


def queue_objects() -> str:
    kueue = "kueue.x-k8s.io/v1beta2"
    objects: list[dict[str, Any]] = [
        {"apiVersion": kueue, "kind": "ResourceFlavor", "metadata": {"name": QUEUE}, "spec": {}},
        {
            "apiVersion": kueue,
            "kind": "ClusterQueue",
            "metadata": {"name": QUEUE},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": QUEUE,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "64"},
                                    {"name": "memory", "nominalQuota": "512Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "1"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": kueue,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": "low"},
            "value": 100,
        },
        {
            "apiVersion": kueue,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": "high"},
            "value": 1000,
        },
    ]
    return "\n---\n".join(json.dumps(o) for o in objects)


def experiment(name: str, model: str, priority: str, epochs: float, save_steps: int) -> str:
    body = json.loads(manifest(name, model, save_steps=save_steps, epochs=epochs))
    body["metadata"]["labels"] = {QUEUE_LABEL: QUEUE, "kueue.x-k8s.io/priority-class": priority}
    body["spec"]["resources"] = {"gpus": 1}
    return json.dumps(body)


def until(check: Callable[[], T | None], within: float, what: str) -> tuple[T, float]:
    """Poll until `check` returns something; it and the time it was first seen."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found is not None and found is not False:
            return found, time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"{what} not within {within:.0f} s")


def status(bench: Bench, name: str) -> dict[str, Any]:
    found = bench.kubectl("get", RESOURCE, name, "-n", bench.namespace, "-o", "json")
    return dict(json.loads(found).get("status") or {})


def workload_condition(bench: Bench, name: str, type_: str) -> bool:
    uid = bench.kubectl(
        "get", RESOURCE, name, "-n", bench.namespace, "-o", "jsonpath={.metadata.uid}"
    )
    items = json.loads(bench.kubectl("get", "workloads", "-n", bench.namespace, "-o", "json"))[
        "items"
    ]
    for workload in items:
        if workload["metadata"]["labels"].get("kueue.x-k8s.io/job-uid") == uid:
            conditions = (workload.get("status") or {}).get("conditions") or []
            return any(c["type"] == type_ and c["status"] == "True" for c in conditions)
    return False


def attempts(run_dir: Path) -> int:
    return max(
        (int(p.stem.rsplit("-", 1)[1]) for p in run_dir.glob(".job-attempt-*.json")), default=0
    )


def run(bench: Bench, count: int, save_steps: int) -> list[Preemption]:
    bench.kubectl("apply", "-f", "-", input=queue_objects())
    bench.kubectl("create", "-n", bench.namespace, "-f", "-", input=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": QUEUE}, "spec": {"clusterQueue": QUEUE},
    }))  # fmt: skip
    bench.kubectl(
        "apply", "-n", bench.namespace, "-f", "-",
        input=experiment("victim", "models/minilm", "low", epochs=2, save_steps=save_steps),
    )  # fmt: skip
    results: list[Preemption] = []
    resumed_from = 0
    for i in range(count):
        result, resumed_from = preempt_once(bench, f"urgent-{i}", resumed_from, save_steps)
        results.append(result)
        print(f"  preemption {i + 1}: {result}", flush=True)
    until(lambda: status(bench, "victim").get("phase") == "Succeeded", 900, "victim Succeeded")
    return results


def preempt_once(
    bench: Bench, urgent: str, resumed_from: int, save_steps: int
) -> tuple[Preemption, int]:
    """One preemption of the victim by `urgent`; its figures and where the victim resumed."""
    victim_run = bench.root / "runs" / "victim"
    # Trained a little past where it resumed (a preemption mid-interval, not at a save).
    until(
        lambda: (
            status(bench, "victim").get("phase") == "Training"
            and _reached(victim_run) >= resumed_from + save_steps + save_steps // 2
        ),
        within=600,
        what=f"victim training before {urgent}",
    )
    before = attempts(victim_run)
    bench.kubectl(
        "apply", "-n", bench.namespace, "-f", "-",
        input=experiment(urgent, "models/tiny", "high", epochs=1, save_steps=1000),
    )  # fmt: skip
    _, evicted = until(lambda: workload_condition(bench, "victim", "Evicted"), 120, "evicted")
    _, admitted = until(lambda: workload_condition(bench, urgent, "Admitted"), 300, "admitted")
    _, held = until(lambda: status(bench, "victim").get("phase") == "Queued", 300, "Queued")
    stopped_at = _reached(victim_run)
    _, ended = until(
        lambda: status(bench, urgent).get("phase") == "Succeeded", 600, f"{urgent} done"
    )
    _, resumed = until(
        lambda: (
            attempts(victim_run) > before and status(bench, "victim").get("phase") == "Training"
        ),
        600,
        "victim training again",
    )
    resumed_from = _resumed_from(victim_run, attempts(victim_run))
    return (
        Preemption(stopped_at - resumed_from, admitted - evicted, held - evicted, resumed - ended),
        resumed_from,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3, help="preemptions of the victim")
    parser.add_argument("--save-steps", type=int, default=8)
    args = parser.parse_args()
    began = time.monotonic()
    with bench_platform("preemption-") as bench:
        snapshots = bench.root / "snapshots"
        write_sentiment_jsonl(snapshots / "datasets" / "sentiment.jsonl", 1200)
        (snapshots / "models").mkdir(parents=True)
        (snapshots / "models" / "minilm").symlink_to(minilm_path(), target_is_directory=True)
        tiny = bench.root / "tiny"
        write_tiny_bert(tiny, minilm_path())
        (snapshots / "models" / "tiny").symlink_to(tiny, target_is_directory=True)
        operator = bench.start_operator("--kueue", "--queue-seconds", "1")
        worker = bench.start_worker()
        try:
            results = run(bench, args.count, args.save_steps)
        finally:
            for process in (operator, worker):
                process.terminate()
                process.wait(timeout=60)
    lost = [r.steps_lost for r in results]
    print()
    print("preemption  steps lost  s to re-admission  s to held  s to resumed")
    for i, r in enumerate(results, 1):
        print(
            f"{i:>10}  {r.steps_lost:>10}  {r.to_admitted:>17.1f}  {r.to_held:>9.1f}  "
            f"{r.to_resumed:>12.1f}"
        )
    mean = statistics.mean
    print(
        f"steps lost per preemption: max {max(lost)} (goal 0); preemption -> quota admitted "
        f"elsewhere: mean {mean(r.to_admitted for r in results):.1f} s, max "
        f"{max(r.to_admitted for r in results):.1f} s ({time.monotonic() - began:.0f} s in all)"
    )
    if max(lost) != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
