"""Cifar10Scaling end to end on kwok pods: CR → RayCluster (real KubeRay) → workflow → Ray
Train on the host's Ray → `.status` results → RayCluster deleted; specs that cannot run. (In
real pods, DDP over two Ray worker pods and a pod killed mid-scale: test_scaling_pods.py; 1
and 2 workers compared: tests/temporal/test_scaling_workflow.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, apply, conditions_by_type, experiment_status, kube_json
from tests.support import eventually

pytestmark = pytest.mark.kube
KIND = "cifar10scalings"


def scaling(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scales": [
            {"workers": 1, "epochs": 1, "batchSize": 64},
            {"workers": 2, "epochs": 1, "batchSize": 64},
        ],
        "dataset": {"name": "synthetic", "size": 1024},
        "ray": {"head": {"cpu": "1", "memory": "2Gi"}, "worker": {"memory": "2Gi"}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "Cifar10Scaling",
        "metadata": {"name": name},
        "spec": spec,
    }


async def until_no_ray_cluster(cluster: ClusterHandle, namespace: str, within: float) -> None:
    """Wait (bounded) until the namespace holds no RayCluster."""

    async def gone() -> bool:
        return not kube_json(cluster, namespace, "rayclusters.ray.io")["items"]

    await eventually(gone, within=within, what="the RayCluster deleted")


async def test_scaling_experiment_runs_on_ray_and_reports_results(
    cluster: ClusterHandle, stack: Stack
) -> None:
    ns = stack.namespace
    apply(cluster, ns, scaling("scale", scales=[{"workers": 1, "epochs": 1, "batchSize": 64}]))
    owner_uid = kube_json(cluster, ns, f"{KIND}.tempotrain.dev", "scale")["metadata"]["uid"]

    async def ray_cluster() -> dict[str, Any] | None:
        items = kube_json(cluster, ns, "rayclusters.ray.io")["items"]
        return items[0] if items else None

    created = await eventually(ray_cluster, within=60, what="the RayCluster")
    assert created["metadata"]["name"] == "scale-ray"
    owner = created["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Cifar10Scaling", owner_uid, True)
    group = created["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}  # no GPUs asked for
    assert group["rayStartParams"]["num-cpus"] == "1"

    async def succeeded() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "scale", KIND)
        if status.get("phase") == "Failed":
            raise AssertionError(f"{status}\n{stack.log('worker')}")
        return status if status.get("phase") == "Succeeded" else None

    status = await eventually(succeeded, within=420, what="phase Succeeded")
    conditions = conditions_by_type(status)
    assert conditions["RayClusterReady"]["status"] == "True"
    assert conditions["WorkflowStarted"]["status"] == "True"
    assert conditions["Completed"]["reason"] == "Succeeded"
    assert status["rayAddress"] == "local"
    assert status["done"] == "1/1"
    [one] = status["results"]
    assert one["workers"] == 1 and one["speedup"] == 1.0 and one["efficiency"] == 1.0
    assert status["bestAccuracy"] == one["testAccuracy"]
    assert one["checkpointPath"].startswith(str(stack.runs / "scale" / "scale-0-1w"))

    await until_no_ray_cluster(cluster, ns, within=60)
    table = cluster.kubectl("get", "c10s", "scale", "-n", ns)
    assert "Succeeded" in table and "1/1" in table


async def test_semantically_invalid_scaling_spec_reaches_invalid_spec(
    cluster: ClusterHandle, stack: Stack
) -> None:
    ns = stack.namespace
    bad = scaling(
        "not-ours", storage={"runs": {"existingClaim": "shared-runs", "reclaimPolicy": "Delete"}}
    )
    apply(cluster, ns, bad)

    async def failed() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "not-ours", KIND)
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, within=60, what="phase Failed")
    condition = conditions_by_type(status)["SpecValid"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "existingClaim 'shared-runs'" in condition["message"]
    assert not kube_json(cluster, ns, "rayclusters.ray.io")["items"]
    assert "workflowId" not in status


async def test_ray_cluster_that_never_gets_ready_fails_after_its_timeout(
    cluster: ClusterHandle, stack: Stack
) -> None:
    ns = stack.namespace
    unschedulable = {
        "readyTimeoutSeconds": 10,
        "head": {"cpu": "1", "memory": "2Gi"},
        "worker": {"memory": "2Gi", "nodeSelector": {"tempotrain.dev/no-such-pool": "x"}},
    }
    apply(cluster, ns, scaling("stuck", ray=unschedulable))

    async def waiting() -> dict[str, Any] | None:
        condition = conditions_by_type(experiment_status(cluster, ns, "stuck", KIND)).get(
            "RayClusterReady", {}
        )
        return condition if condition.get("reason") == "Provisioning" else None

    provisioning = await eventually(waiting, within=30, what="RayClusterReady Provisioning")
    assert provisioning["status"] == "False"

    async def failed() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "stuck", KIND)
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, within=60, what="phase Failed after the timeout")
    condition = conditions_by_type(status)["RayClusterReady"]
    assert (condition["status"], condition["reason"]) == ("False", "Timeout")
    assert "not ready after 10s" in status["message"]
    assert "workflowId" not in status

    await until_no_ray_cluster(cluster, ns, within=30)
