"""Cifar10Scaling in real pods, with no host worker and no host Ray: KubeRay makes the head and
worker pods from the workers image and its probes pass; the ray-driver worker pod submits each
scale to the head's Ray Jobs API by its Service name; Ray Train runs DDP over the 2 Ray worker
pods; a Ray worker pod's container SIGKILLed mid-scale costs at most the epoch it was in (Ray
Train's FailureConfig restarts the worker group, which resumes from the epoch checkpoint)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.provisioner import claim_directory
from tempotrain_operator.ray_children import jobs_address
from tempotrain_workers.checkpoints import MARKER_FILE

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    kill_container,
    kube_json,
    pod_ready,
    until_released,
)
from tests.e2e.test_cifar10_scaling import KIND, scaling, until_no_ray_cluster
from tests.support import eventually

pytestmark = pytest.mark.kube

RESOURCE = f"{KIND}.tempotrain.dev"
EPOCHS = 4


def pod_scaling(name: str) -> dict[str, Any]:
    """One scale of 2 Ray Train workers (the 1-vs-2 comparison runs on the host's Ray in
    test_cifar10_scaling), small enough for a 2-core node: Ray counts one CPU per worker pod,
    the pods ask for less (ray.worker.cpu)."""
    return scaling(
        name,
        scales=[{"workers": 2, "epochs": EPOCHS, "batchSize": 64}],
        dataset={"name": "synthetic", "size": 2048},
        ray={
            # With the driver pod's 250m: 1.95 of the node's 2 CPUs. The head runs each
            # scale's Ray Train driver (torch imports): starved, it delays every start.
            "head": {"cpu": "500m", "memory": "3Gi"},
            "worker": {"cpu": "600m", "memory": "3Gi"},
        },
    )


def ray_pods(cluster: ClusterHandle, namespace: str, node_type: str) -> list[dict[str, Any]]:
    pods = kube_json(cluster, namespace, "pods")["items"]
    return [
        p
        for p in pods
        if p["metadata"]["labels"].get("ray.io/node-type") == node_type
        and not p["metadata"].get("deletionTimestamp")
    ]


def checkpointed(scale_dir: Path) -> bool:
    """An epoch checkpoint is complete on the runs volume (its marker is written last)."""
    return any(scale_dir.glob(f"checkpoint_*/{MARKER_FILE}"))


def epochs_done(scale_dir: Path) -> int:
    """Epochs the scale has finished (rank 0 rewrites progress.json after each one)."""
    try:
        return int(json.loads((scale_dir / "_tempotrain" / "progress.json").read_text())["epoch"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


async def test_scaling_runs_on_kuberay_pods_through_a_ray_worker_kill(
    cluster: ClusterHandle,
    pod_stack: Stack,
    real_node: str,
    node_runtime: Ctr,
    temporal: TemporalHandle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = pod_stack.namespace
    apply(cluster, ns, pod_scaling("scale"))
    owner_uid = kube_json(cluster, ns, RESOURCE, "scale")["metadata"]["uid"]

    async def ray_pods_ready() -> list[dict[str, Any]] | None:
        pods = ray_pods(cluster, ns, "head") + ray_pods(cluster, ns, "worker")
        return pods if len(pods) == 3 and all(map(pod_ready, pods)) else None

    # Ready means KubeRay's own probes (raylet and GCS health, through wget) pass in them.
    pods = await eventually(ray_pods_ready, within=300, what="the Ray head and 2 workers Ready")
    assert {p["spec"]["nodeName"] for p in pods} == {real_node}
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["image"] == pod_stack.worker_image
        assert "readinessProbe" in container and "livenessProbe" in container
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    ray_cluster = kube_json(cluster, ns, "rayclusters.ray.io", "scale-ray")
    owner = ray_cluster["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Cifar10Scaling", owner_uid, True)

    scale_dir = claim_directory(cluster.kubectl, ns, "scale-runs") / "scale" / "scale-0-2w"

    # Past its first epoch checkpoint, one of the Ray worker pods dies.
    await eventually(lambda: checkpointed(scale_dir), within=400, what="a first epoch checkpoint")
    status = kube_json(cluster, ns, RESOURCE, "scale")["status"]
    # Submitted by the driver pod to the head, by the Service KubeRay made for it.
    assert status["rayAddress"] == jobs_address("scale", ns)
    assert conditions_by_type(status)["RayClusterReady"]["status"] == "True"
    victim = ray_pods(cluster, ns, "worker")[0]
    killed_at, killed_epoch = time.monotonic(), epochs_done(scale_dir)
    kill_container(node_runtime, victim)

    async def finished() -> dict[str, Any] | None:
        status = dict(kube_json(cluster, ns, RESOURCE, "scale").get("status") or {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = await eventually(finished, within=600, what="Succeeded or Failed")
    assert status["phase"] == "Succeeded", (status, pod_stack.log("operator"))
    seconds = time.monotonic() - killed_at
    assert status["done"] == "1/1"
    [two] = status["results"]
    assert two["workers"] == 2
    # Ray Train restarted the worker group and it resumed from an epoch checkpoint: at most
    # the epoch in progress at the kill is redone (plus one whose checkpoint was still being
    # written when the pod died).
    assert two["restarts"] >= 1, two
    assert two["resumedEpoch"] >= 1, two
    recomputed = killed_epoch - two["resumedEpoch"]
    assert 0 <= recomputed <= 1, (killed_epoch, two)
    assert status["bestAccuracy"] == two["testAccuracy"]
    # DDP across the two pods: after the restart, both ranks hold the same parameters again.
    result = json.loads((scale_dir / "_tempotrain" / "result.json").read_text())
    assert result["epochs"] == EPOCHS and result["test_accuracy"] > 0.5, result
    assert len(result["parameter_digests"]) == 2, result
    assert len(set(result["parameter_digests"])) == 1, result
    assert two["checkpointPath"].startswith("/data/runs/scale/scale-0-2w/")
    with capsys.disabled():
        print(
            f"\n[ray pods] Ray worker pod SIGKILLed after epoch {killed_epoch}/{EPOCHS}: "
            f"resumed from epoch {two['resumedEpoch']} ({recomputed} recomputed), scale done "
            f"{seconds:.0f} s later"
        )

    # Done: the RayCluster goes (onCompletion: Delete), the driver pod once the workflow closed.
    await until_no_ray_cluster(cluster, ns, within=120)
    await until_released(cluster, ns, RESOURCE, "scale")
    handle = temporal.client.get_workflow_handle(status["workflowId"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    table = cluster.kubectl("get", "c10s", "scale", "-n", ns)
    assert "Succeeded" in table and "1/1" in table
