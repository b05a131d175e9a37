"""BertExperiment end to end: real apiserver + controller-manager + kwok, real Temporal,
the operator and a host worker as processes, the real HF Trainer on MiniLM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from tempotrain_workers.checkpoints import latest_verified

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    kube_json,
    until_released,
)
from tests.support import eventually, node_pool

pytestmark = pytest.mark.kube

RESOURCE = "bertexperiments.tempotrain.dev"


class StatusLog:
    """Every status the apiserver reports for one CR, in order, via a watch."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    @property
    def phases(self) -> list[str]:
        seen: list[str] = []
        for status in self.statuses:
            phase = status.get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen

    @property
    def checkpoint_steps(self) -> set[int]:
        return {s["latestCheckpoint"]["step"] for s in self.statuses if s.get("latestCheckpoint")}


@contextlib.asynccontextmanager
async def watching(cluster: ClusterHandle, namespace: str, name: str) -> AsyncIterator[StatusLog]:
    log = StatusLog()

    # Watch from the list's resourceVersion: every later change is delivered, however long
    # the watch takes to connect (else the first writes, e.g. Pending, can be missed).
    since = kube_json(cluster, namespace, RESOURCE)["metadata"]["resourceVersion"]

    async def follow() -> None:
        async for _, obj in cluster.api.watch(RESOURCE, namespace=namespace, since=since):
            if obj.name == name:
                log.statuses.append(dict(obj.raw.get("status") or {}))

    task = asyncio.create_task(follow())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _phase(cluster: ClusterHandle, namespace: str, name: str) -> str | None:
    return kube_json(cluster, namespace, RESOURCE, name).get("status", {}).get("phase")


async def test_experiment_trains_evaluates_and_reports_in_status(
    cluster: ClusterHandle, stack: Stack, minilm_path: Path
) -> None:
    ns = stack.namespace
    async with watching(cluster, ns, "sentiment") as log:
        apply(cluster, ns, experiment("sentiment", stack.model(minilm_path)))

        async def running_pods() -> list[dict[str, Any]] | None:
            pods = kube_json(cluster, ns, "pods")["items"]
            running = [p for p in pods if p["status"].get("phase") == "Running"]
            return running if len(running) == 2 else None

        pods = await eventually(running_pods, within=60, what="both worker pods Running")
        nodes = {
            p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]["nodeName"]
            for p in pods
        }
        assert node_pool(cluster.kubectl, nodes["training-worker"]) == "gpu", nodes
        # ReadWriteOnce claims: eval runs on its trainer's node, tolerating its GPU taint.
        assert nodes["eval-worker"] == nodes["training-worker"], nodes

        async def finished() -> str | None:
            phase = await _phase(cluster, ns, "sentiment")
            return phase if phase in ("Succeeded", "Failed") else None

        assert await eventually(finished, within=300, what="Succeeded") == "Succeeded", stack.log(
            "worker"
        )
        await eventually(lambda: _settled(log), within=10, what="the watch to catch up")

    phases = log.phases
    assert phases[0] == "Pending" and phases[-1] == "Succeeded", phases
    assert [p for p in phases if p in ("Pending", "Training", "Evaluating", "Succeeded")] == [
        "Pending",
        "Training",
        "Evaluating",
        "Succeeded",
    ], phases
    assert len(log.checkpoint_steps) >= 2, log.checkpoint_steps
    # Live progress between checkpoints (saveSteps 8) comes from the training attempt's
    # heartbeat, read by the operator: it costs the workflow no history.
    live = {s["progress"]["step"] for s in log.statuses if s.get("progress")}
    assert any(step % 8 for step in live), sorted(live)

    status = kube_json(cluster, ns, RESOURCE, "sentiment")["status"]
    assert status["metrics"]["evalAccuracy"] > 0.8
    assert status["progress"]["percent"] == 100
    conditions = conditions_by_type(status)
    assert conditions["WorkflowStarted"]["status"] == "True"
    assert conditions["Completed"]["reason"] == "Succeeded"

    table = cluster.kubectl("get", "bexp", "-n", ns)
    for column in ("PHASE", "PROGRESS", "STEP", "LOSS", "ACCURACY", "AGE"):
        assert column in table.splitlines()[0]
    # Rounded for the eye; the status keeps every digit.
    loss, accuracy = table.splitlines()[1].split()[4:6]
    assert loss == f"{status['latestCheckpoint']['loss']:.4g}", table
    assert accuracy == f"{status['metrics']['evalAccuracy']:.4g}", table
    assert "CHECKPOINT" in cluster.kubectl("get", "tempotrain", "-n", ns, "-o", "wide")

    # `kubectl describe` tells the story: each phase it went through, and its checkpoints.
    async def story_told() -> str | None:
        described = cluster.kubectl("describe", "bexp", "sentiment", "-n", ns)
        return described if "→ Succeeded" in described else None

    described = await eventually(story_told, within=30, what="the Succeeded event")
    assert "PhaseChanged" in described and "new → Pending" in described, described
    assert "→ Training" in described, described
    assert re.search(r"CheckpointSaved .*step \d+ saved and verified", described), described
    # Its children in one event (an apiserver write each, under a burst of experiments).
    selector = "involvedObject.name=sentiment,reason=Created"
    created = json.loads(
        cluster.kubectl("get", "events", "-n", ns, f"--field-selector={selector}", "-ojson")
    )["items"]
    assert len(created) == 1, created
    assert created[0]["message"].count("PersistentVolumeClaim ") == 2, created[0]["message"]
    assert created[0]["message"].count("Deployment ") == 2, created[0]["message"]

    await until_released(cluster, ns, RESOURCE, "sentiment")
    owner_uid = kube_json(cluster, ns, RESOURCE, "sentiment")["metadata"]["uid"]
    for deployment in kube_json(cluster, ns, "deployments")["items"]:
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == owner_uid
        assert deployment["metadata"]["labels"]["tempotrain.dev/experiment"] == "sentiment"
        assert deployment["spec"]["replicas"] == 0  # scaled down when finished
    claims = {c["metadata"]["name"] for c in kube_json(cluster, ns, "pvc")["items"]}
    assert claims == {"sentiment-snapshots", "sentiment-runs"}


async def _settled(log: StatusLog) -> bool:
    return bool(log.phases) and log.phases[-1] == "Succeeded"


async def test_operator_killed_mid_training_restarts_without_duplicates(
    cluster: ClusterHandle, stack: Stack, temporal: TemporalHandle, minilm_path: Path
) -> None:
    ns = stack.namespace
    spec = experiment("restart", stack.model(minilm_path))
    spec["spec"]["training"]["epochs"] = 4
    apply(cluster, ns, spec)

    async def checkpointed() -> int | None:
        status = kube_json(cluster, ns, RESOURCE, "restart").get("status", {})
        return (status.get("latestCheckpoint") or {}).get("step")

    first_step = await eventually(checkpointed, within=180, what="a first checkpoint in status")
    stack.kill("operator")
    stack.start_operator()

    async def advanced() -> bool:
        step = await checkpointed()
        return step is not None and step > first_step

    await eventually(advanced, within=180, what="status to keep advancing after the restart")

    async def succeeded() -> bool:
        return await _phase(cluster, ns, "restart") == "Succeeded"

    await eventually(succeeded, within=300, what="Succeeded after the operator restart")
    workflow_id = kube_json(cluster, ns, RESOURCE, "restart")["status"]["workflowId"]
    runs = [w async for w in temporal.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) == 1, runs
    assert len(kube_json(cluster, ns, "deployments")["items"]) == 2
    assert len(kube_json(cluster, ns, "pvc")["items"]) == 2


async def test_delete_mid_training_cancels_and_honours_reclaim_policy(
    cluster: ClusterHandle, stack: Stack, temporal: TemporalHandle, minilm_path: Path
) -> None:
    ns = stack.namespace
    spec = experiment(
        "doomed",
        stack.model(minilm_path),
        storage={
            "snapshots": {"reclaimPolicy": "Retain"},
            "runs": {"reclaimPolicy": "Delete"},
        },
    )
    spec["spec"]["training"]["epochs"] = 6
    async with watching(cluster, ns, "doomed") as log:
        apply(cluster, ns, spec)

        async def training_with_checkpoint() -> bool:
            status = kube_json(cluster, ns, RESOURCE, "doomed").get("status", {})
            return status.get("phase") == "Training" and bool(status.get("latestCheckpoint"))

        await eventually(training_with_checkpoint, within=180, what="training with a checkpoint")
        workflow_id = kube_json(cluster, ns, RESOURCE, "doomed")["status"]["workflowId"]
        cluster.kubectl("delete", RESOURCE, "doomed", "-n", ns, "--wait=false")

        async def gone() -> bool:
            return not kube_json(cluster, ns, RESOURCE)["items"]

        await eventually(gone, within=30, what="the CR to be deleted")
    # Deleting reads as such: Terminating (then Cancelled), never Failed.
    assert "Terminating" in log.phases and "Failed" not in log.phases, log.phases

    async def cancelled() -> bool:
        description = await temporal.client.get_workflow_handle(workflow_id).describe()
        return description.status == WorkflowExecutionStatus.CANCELED

    await eventually(cancelled, within=30, what="the workflow to be cancelled")

    async def collected() -> bool:
        deployments = kube_json(cluster, ns, "deployments")["items"]
        claims = {
            c["metadata"]["name"]
            for c in kube_json(cluster, ns, "pvc")["items"]
            if not c["metadata"].get("deletionTimestamp")
        }
        return not deployments and claims == {"doomed-snapshots"}

    await eventually(collected, within=60, what="Deployments and the Delete-policy PVC collected")
    # The cancelled trainer saved on its way out; a verified checkpoint remains on disk.
    snapshot = json.loads(next((stack.snapshots).glob("sentiment-*/metadata.json")).read_text())
    assert latest_verified(stack.runs / "doomed", snapshot["snapshot_hash"]) is not None
