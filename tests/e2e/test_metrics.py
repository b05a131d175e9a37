"""The operator and a worker serve `/metrics`; the platform's real Prometheus scrapes both,
and PromQL sees the run: its training steps, its checkpoint saves (how many, how long, how
big), the operator's reconciles, workflow start, children and status pushes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.net import free_ports
from tempotrain_dev.prometheus_server import LocalPrometheus

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, apply, experiment, until_ended
from tests.support import eventually

pytestmark = [pytest.mark.kube, pytest.mark.temporal]


async def test_prometheus_sees_training_progress_checkpoints_and_the_operator(
    cluster: ClusterHandle,
    crds: None,
    temporal_address: str,
    namespace: str,
    tmp_path: Path,
    tiny_bert: Path,
    prometheus: LocalPrometheus,
) -> None:
    from tempotrain_workers.sample_data import write_sentiment_jsonl

    operator_port, worker_port = free_ports(2)
    stack = Stack.fresh(
        namespace, cluster, temporal_address, tmp_path,
        operator_args=("--metrics-port", str(operator_port)),
    )  # fmt: skip
    write_sentiment_jsonl(stack.snapshots / "datasets" / "sentiment.jsonl", 200)
    scrape = f"test-{uuid.uuid4().hex[:8]}"
    prometheus.add_targets(
        f"{scrape}-operator",
        [f"127.0.0.1:{operator_port}"],
        {"component": "operator", "test": scrape},
    )
    prometheus.add_targets(
        f"{scrape}-worker", [f"127.0.0.1:{worker_port}"], {"component": "worker", "test": scrape}
    )
    stack.start_operator()
    stack.start_worker("worker", "--metrics-port", str(worker_port))
    try:
        manifest = experiment("watched", stack.model(tiny_bert))
        # ~1,300 steps: long enough for a rate (the trainer's spans 5 s at least), 6 saves.
        manifest["spec"]["training"].update({"epochs": 100, "saveSteps": 200})
        apply(cluster, namespace, manifest)
        status = await until_ended(cluster, namespace, "watched", within=300)
        assert status["phase"] == "Succeeded", (status, stack.log("worker"))
        run = status["runId"]
        total_steps = status["progress"]["totalSteps"]

        def value(promql: str) -> float | None:
            found = prometheus.query(promql)
            return float(found[0]["value"][1]) if found else None

        def reaches(promql: str, wanted: float) -> Any:
            async def probe() -> float | None:
                seen = value(promql)
                return seen if seen is not None and seen >= wanted else None

            return eventually(probe, within=30, what=f"{promql} >= {wanted}")

        on = f'test="{scrape}"'
        # Training progress: every step the run took, and its rate while it trained.
        steps = await reaches(f'tempotrain_training_steps_total{{{on},run="{run}"}}', total_steps)
        assert steps == total_steps
        samples = value(f"max_over_time(tempotrain_training_samples_per_second{{{on}}}[5m])")
        assert samples is not None and samples > 0, stack.log("worker")
        # Scraped while it trained, not only at the end: the counter rose between scrapes.
        rose = value(f'increase(tempotrain_training_steps_total{{{on},run="{run}"}}[5m])')
        assert rose is not None and rose > 0
        # Checkpoint saves: as many as the run made, each timed, the newest one's size.
        saved = status["checkpointsSaved"]
        assert saved >= 2, status
        await reaches(f'tempotrain_checkpoints_saved_total{{{on},run="{run}"}}', saved)
        await reaches(f'tempotrain_checkpoint_save_seconds_count{{{on},run="{run}"}}', saved)
        size = value(f'tempotrain_checkpoint_bytes{{{on},run="{run}"}}')
        assert size is not None and size > 100_000, size  # a model's weights, at least
        # The operator: the reconcile, the workflow it started, the children, the pushes.
        kind = 'kind="BertExperiment"'
        await reaches(f"tempotrain_operator_reconcile_seconds_count{{{on},{kind}}}", 1)
        await reaches(f"tempotrain_operator_workflows_started_total{{{on},{kind}}}", 1)
        await reaches(f"tempotrain_operator_status_pushes_total{{{on},{kind}}}", 3)
        children = f'tempotrain_operator_children_created_total{{{on},kind="Deployment"}}'
        assert await reaches(children, 2) == 2  # training and eval
        await reaches(f"sum(tempotrain_operator_kube_requests_total{{{on}}})", 1)
        failures = value(f"sum(tempotrain_activity_failures_total{{{on}}})")
        assert failures is None, "no activity of a clean run failed"
    finally:
        prometheus.remove_targets(f"{scrape}-operator")
        prometheus.remove_targets(f"{scrape}-worker")
        stack.stop_all()
