"""`spec.suspend`: a running experiment saves a verified checkpoint, its pods go and its
workflow waits; resumed, it carries on from that checkpoint with nothing recomputed (a
BatchInference: its chunks in flight finish, none starts, none is computed twice). One
suspended before it starts creates nothing; a finished one stays as it is and says so."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from tempotrain_dev.demo import column_starts, row_cells
from tempotrain_dev.provisioner import claim_directory
from tempotrain_operator.bert_experiment import training_heartbeat
from tempotrain_workers.api import workflow_id_for
from tempotrain_workers.checkpoints import latest_verified
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    experiment_status,
    kube_json,
)
from tests.e2e.test_batch_inference import RESOURCE as BINF
from tests.e2e.test_batch_inference import batch_inference
from tests.e2e.test_real_pods import (
    RESOURCE,
    data_volume,
    latest_attempt,
    pod_experiment,
    reached_step,
    snapshot_hash,
)
from tests.support import eventually

pytestmark = pytest.mark.kube


def set_suspend(cluster: ClusterHandle, ns: str, kind: str, name: str, value: bool) -> None:
    body = json.dumps({"spec": {"suspend": value}})
    cluster.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", body)


def columns(cluster: ClusterHandle, ns: str, kind: str, name: str) -> dict[str, str]:
    """`kubectl get` as a user reads it: each printer column's cell, by its header (empty
    cells leave no word behind, so splitting a row would shift the rest)."""
    header, row = cluster.kubectl("get", kind, name, "-n", ns).splitlines()[:2]
    starts = column_starts(header)
    return dict(zip(row_cells(header, starts), row_cells(row, starts), strict=True))


def events(cluster: ClusterHandle, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},reason={reason}"
    found = cluster.kubectl("get", "events", "-n", ns, f"--field-selector={selector}", "-ojson")
    items: list[dict[str, Any]] = json.loads(found)["items"]
    return items


async def test_a_suspended_experiment_saves_frees_its_pods_and_resumes_recomputing_nothing(
    cluster: ClusterHandle,
    pod_stack: Stack,
    temporal: TemporalHandle,
    minilm_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = pod_stack.namespace
    data = await data_volume(cluster, ns, minilm_path)
    # Long enough that the suspension lands mid-run: with checkpoints written in the
    # background a 4-epoch run here ended (20 s) before the suspension reached it.
    apply(cluster, ns, pod_experiment("paused", epochs=10))
    run_dir = claim_directory(cluster.kubectl, ns, "paused-runs") / "paused"

    async def training_with_checkpoint() -> bool:
        status = experiment_status(cluster, ns, "paused")
        return status.get("phase") == "Training" and bool(status.get("latestCheckpoint"))

    await eventually(training_with_checkpoint, within=300, what="training with a checkpoint")

    async def estimated() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "paused")
        rate = (status.get("progress") or {}).get("stepsPerSecond")
        return status if rate and status.get("estimatedCompletionTime") else None

    status = await eventually(estimated, within=120, what="an ETA from the trainer's rate")
    shown = columns(cluster, ns, "bexp", "paused")
    assert shown["ETA"] and shown["SUSPEND"] == "false", shown
    asked = time.monotonic()
    set_suspend(cluster, ns, RESOURCE, "paused", True)

    async def suspended() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "paused")
        held = conditions_by_type(status).get("Suspended") or {}
        return (
            status if status.get("phase") == "Suspended" and held.get("status") == "True" else None
        )

    status = await eventually(suspended, within=180, what="phase Suspended")
    suspend_seconds = time.monotonic() - asked
    assert conditions_by_type(status)["Suspended"]["reason"] == "Suspended", status["conditions"]

    async def no_pods() -> bool:
        return not kube_json(cluster, ns, "pods")["items"]

    await eventually(no_pods, within=120, what="the worker pods to be gone")
    for deployment in kube_json(cluster, ns, "deployments")["items"]:
        assert deployment["spec"]["replicas"] == 0
    # It stopped where it was, with a verified checkpoint at that very step.
    stopped_at = reached_step(run_dir)
    total_steps = json.loads((run_dir / "progress.json").read_text())["total_steps"]
    assert stopped_at < total_steps, "the run ended before the suspension reached it"
    verified = latest_verified(run_dir, snapshot_hash(data))
    assert verified is not None and verified.step == stopped_at, (verified, stopped_at)
    assert status["latestCheckpoint"]["step"] == stopped_at
    # The workflow waits: running, with no training attempt pending.
    workflow_id = status["workflowId"]
    handle = temporal.client.get_workflow_handle(workflow_id)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await training_heartbeat(temporal.client, workflow_id) is None
    shown = columns(cluster, ns, "bexp", "paused")
    assert shown["PHASE"] == "Suspended" and shown["SUSPEND"] == "true", shown
    assert "eta" not in status  # nothing trains: no time left to show
    attempts = status["attempts"]

    # Resumed: new pods, a new attempt from exactly that checkpoint, to the end.
    asked = time.monotonic()
    set_suspend(cluster, ns, RESOURCE, "paused", False)

    async def resumed() -> tuple[int, int] | None:
        attempt = latest_attempt(run_dir)
        return attempt if attempt[0] > attempts and reached_step(run_dir) > attempt[1] else None

    _, resumed_from = await eventually(resumed, within=300, what="training to resume")
    resume_seconds = time.monotonic() - asked
    assert stopped_at - resumed_from == 0, "steps recomputed after a suspension"

    async def finished() -> str | None:
        phase = experiment_status(cluster, ns, "paused").get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    assert await eventually(finished, within=600, what="Succeeded") == "Succeeded"
    status = experiment_status(cluster, ns, "paused")
    assert conditions_by_type(status)["Suspended"]["reason"] == "Resumed"
    # A suspension is no failure: the attempt it stopped is not one.
    assert "lastFailure" not in status, status.get("lastFailure")
    with capsys.disabled():
        print(
            f"\n[suspend] asked → Suspended (checkpoint saved, pods gone): "
            f"{suspend_seconds:.0f} s; resumed → next step {resume_seconds:.0f} s; "
            f"recomputed {stopped_at - resumed_from} steps"
        )


async def test_suspended_before_it_starts_it_creates_nothing_and_a_finished_one_stays(
    cluster: ClusterHandle, operator_only: Stack, temporal: TemporalHandle
) -> None:
    ns = operator_only.namespace
    apply(cluster, ns, experiment("later", "models/minilm", suspend=True))

    async def held() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "later")
        return status if status.get("phase") == "Suspended" else None

    status = await eventually(held, within=60, what="phase Suspended")
    assert conditions_by_type(status)["Suspended"]["reason"] == "NotStarted"
    assert "workflowId" not in status
    assert not kube_json(cluster, ns, "deployments")["items"]
    uid = kube_json(cluster, ns, RESOURCE, "later")["metadata"]["uid"]
    workflow_id = workflow_id_for("BertExperiment", ns, "later", uid)

    # Resumed: created and started (no worker here: it stays Pending).
    set_suspend(cluster, ns, RESOURCE, "later", False)

    async def started() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "later")
        return status if status.get("workflowId") and status.get("phase") == "Pending" else None

    status = await eventually(started, within=60, what="the workflow to start")
    assert status["workflowId"] == workflow_id and status.get("startTime")
    assert conditions_by_type(status)["Suspended"]["status"] == "False"
    deployments = {d["metadata"]["name"] for d in kube_json(cluster, ns, "deployments")["items"]}
    assert deployments == {"later-training", "later-eval"}
    description = await temporal.client.get_workflow_handle(workflow_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING

    # A Failed one (its image is not allowed here): suspending it changes nothing, and says so.
    apply(cluster, ns, experiment("refused", "models/minilm", workers={"image": "evil/x:1"}))
    await eventually(
        lambda: experiment_status(cluster, ns, "refused").get("phase") == "Failed",
        within=60,
        what="Failed",
    )
    set_suspend(cluster, ns, RESOURCE, "refused", True)
    await eventually(
        lambda: bool(events(cluster, ns, "refused", "SuspendIgnored")),
        within=60,
        what="a SuspendIgnored event",
    )
    status = experiment_status(cluster, ns, "refused")
    assert status["phase"] == "Failed" and "Suspended" not in conditions_by_type(status)


async def test_a_suspended_batch_inference_finishes_its_chunks_in_flight_then_holds(
    cluster: ClusterHandle, stack: Stack, tiny_bert: Path, temporal: TemporalHandle
) -> None:
    ns = stack.namespace
    write_sentiment_jsonl(stack.snapshots / "datasets" / "many.jsonl", 3000)
    job = batch_inference(
        "paced",
        model={"name": stack.model(tiny_bert)},
        dataset={"file": "datasets/many.jsonl", "textField": "sentence"},
        chunkSize=20,
    )
    apply(cluster, ns, job)

    async def some_done() -> bool:
        chunks = experiment_status(cluster, ns, "paced", "batchinferences").get("chunks") or {}
        return chunks.get("completed", 0) >= 1

    await eventually(some_done, within=120, what="a first chunk done")
    set_suspend(cluster, ns, BINF, "paced", True)

    async def suspended() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "paced", "batchinferences")
        held = conditions_by_type(status).get("Suspended") or {}
        return status if held.get("status") == "True" else None

    status = await eventually(suspended, within=120, what="Suspended")
    assert status["phase"] == "Suspended" and status["chunks"]["completed"] < 150, status
    assert kube_json(cluster, ns, "deployment", "paced-inference")["spec"]["replicas"] == 0
    # Held between chunks: its workflow runs, with no chunk in flight.
    handle = temporal.client.get_workflow_handle(status["workflowId"])
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert not description.raw_description.pending_activities

    set_suspend(cluster, ns, BINF, "paced", False)

    async def finished() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "paced", "batchinferences")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = await eventually(finished, within=300, what="paced to finish")
    assert status["phase"] == "Succeeded", status
    # Every chunk computed once: none twice across the suspension, none skipped.
    assert status["chunks"] == {
        "size": 20,
        "total": 150,
        "completed": 150,
        "skipped": 0,
        "failed": 0,
    }
    assert status["output"]["rows"] == 3000
    assert conditions_by_type(status)["Suspended"]["reason"] == "Resumed"
