"""Operator at scale: 500 BertExperiments, no workers. Prints the time until every one has
WorkflowStarted and its four children, the operator's peak RSS, and apiserver requests per CR
(goals: all within 120 s, RSS < 300 MB).

    .venv/bin/python bench/operator_scale.py [--experiments 500]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
from pathlib import Path

from _operator_harness import Bench, bench_platform
from tempotrain_dev.waiting import wait_for


def manifests(count: int) -> str:
    return "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "tempotrain.dev/v1alpha1",
                "kind": "BertExperiment",
                "metadata": {"name": f"scale-{i:04d}"},
                "spec": {"model": {"name": "bert-base-uncased"}, "resources": {"gpus": 0}},
            }
        )
        for i in range(count)
    )


def apiserver_requests(bench: Bench) -> int:
    metrics = bench.kubectl("get", "--raw", "/metrics")
    return sum(
        int(float(m.group(1)))
        for m in re.finditer(
            r"^apiserver_request_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE
        )
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def done(bench: Bench, count: int) -> bool:
    items = json.loads(bench.kubectl("get", "bexp", "-n", bench.namespace, "-o", "json"))["items"]
    started = sum(
        any(
            c["type"] == "WorkflowStarted" and c["status"] == "True"
            for c in (i.get("status") or {}).get("conditions", [])
        )
        for i in items
    )
    deployments = len(
        json.loads(bench.kubectl("get", "deploy", "-n", bench.namespace, "-o", "json"))["items"]
    )
    claims = len(
        json.loads(bench.kubectl("get", "pvc", "-n", bench.namespace, "-o", "json"))["items"]
    )
    print(f"  {started}/{count} started, {deployments} Deployments, {claims} PVCs", flush=True)
    return started == count and deployments == 2 * count and claims == 2 * count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=500)
    args = parser.parse_args()
    with bench_platform("operator-scale-") as bench:
        operator = bench.start_operator()
        try:
            before = apiserver_requests(bench)
            started = time.monotonic()
            bench.kubectl(
                "apply", "-n", bench.namespace, "-f", "-", input=manifests(args.experiments)
            )
            wait_for(
                lambda: done(bench, args.experiments),
                timeout=600,
                what="every experiment to be reconciled",
                interval=5,
            )
            elapsed = time.monotonic() - started
            requests = apiserver_requests(bench) - before
            rss = peak_rss_mb(operator.pid)
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=60)
    print(
        f"{args.experiments} experiments reconciled in {elapsed:.1f} s "
        f"(goal 120 s: ratio {elapsed / 120:.2f})"
    )
    print(f"operator peak RSS {rss:.0f} MB (goal 300 MB: ratio {rss / 300:.2f})")
    print(
        f"apiserver requests per CR: {requests / args.experiments:.1f} "
        "(all clients, incl. controller-manager, scheduler and kwok for the children)"
    )


if __name__ == "__main__":
    main()
