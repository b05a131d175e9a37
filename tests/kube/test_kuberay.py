"""The real KubeRay operator runs on the local control plane: a RayCluster gets its head and
worker Pods (made Running and Ready by kwok), turns `ready`, and takes its Pods with it when
deleted."""

from __future__ import annotations

from typing import Any

import pytest
from kr8s.asyncio.objects import Pod, new_class

from tests.conftest import ClusterHandle
from tests.support import eventually, node_pool

# kwok makes the Ray pods Running without running Ray.
pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("kwok_nodes")]

RayCluster = new_class("RayCluster.ray.io/v1", namespaced=True, plural="rayclusters")

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pod_template(name: str, resources: dict[str, Any], **pod_spec: object) -> dict[str, Any]:
    # Never pulled: kwok Pods have no containers, so any image name will do.
    container = {"name": name, "image": "rayproject/ray:2.46.0", "resources": resources}
    return {"spec": {"containers": [container], **pod_spec}}


def _ray_cluster(
    name: str, namespace: str, workers: int, worker_resources: dict[str, Any], **pod_spec: object
) -> dict[str, Any]:
    cpu = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": _pod_template("ray-head", cpu)},
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": 0,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": _pod_template("ray-worker", worker_resources, **pod_spec),
                }
            ],
        },
    }


async def _ray_pods(cluster: ClusterHandle, namespace: str, name: str) -> list[Pod]:
    selector = {"ray.io/cluster": name}
    return [p async for p in cluster.api.get("pods", namespace=namespace, label_selector=selector)]


async def _ready(ray_cluster: Any, workers: int) -> dict[str, Any] | None:
    await ray_cluster.refresh()
    status: dict[str, Any] = ray_cluster.raw.get("status") or {}
    done = status.get("state") == "ready" and status.get("readyWorkerReplicas") == workers
    return status if done else None


async def test_raycluster_turns_ready_on_cpu_nodes_and_deleting_it_removes_its_pods(
    cluster: ClusterHandle, namespace: str
) -> None:
    cpu = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    ray_cluster = await RayCluster(_ray_cluster("cpu", namespace, 2, cpu), api=cluster.api)
    await ray_cluster.create()

    status = await eventually(
        lambda: _ready(ray_cluster, 2), within=20, what="KubeRay to report the RayCluster ready"
    )
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["HeadPodReady"] == "True", status
    assert conditions["RayClusterProvisioned"] == "True", status
    assert status["head"]["podIP"], status  # kwok hands out Pod IPs from its --cidr

    pods = await _ray_pods(cluster, namespace, "cpu")
    kinds = sorted(p.metadata["labels"]["ray.io/node-type"] for p in pods)
    assert kinds == ["head", "worker", "worker"]
    # GPU nodes are tainted.
    assert {node_pool(cluster.kubectl, p.spec["nodeName"]) for p in pods} == {"cpu"}

    await ray_cluster.delete()

    async def pods_gone() -> bool:
        return not await _ray_pods(cluster, namespace, "cpu")

    await eventually(pods_gone, within=20, what="the RayCluster's Pods to be deleted")


async def test_gpu_worker_group_that_tolerates_the_gpu_taint_lands_on_gpu_nodes(
    cluster: ClusterHandle, namespace: str
) -> None:
    gpu = {"requests": {"cpu": "1"}, "limits": {"cpu": "1", "nvidia.com/gpu": "1"}}
    manifest = _ray_cluster("gpu", namespace, 2, gpu, tolerations=[GPU_TOLERATION])
    ray_cluster = await RayCluster(manifest, api=cluster.api)
    await ray_cluster.create()

    status = await eventually(
        lambda: _ready(ray_cluster, 2), within=20, what="the GPU RayCluster to be ready"
    )
    assert status["desiredGPU"] == "2", status
    workers = [
        p
        for p in await _ray_pods(cluster, namespace, "gpu")
        if p.metadata["labels"]["ray.io/node-type"] == "worker"
    ]
    assert len(workers) == 2
    assert {node_pool(cluster.kubectl, p.spec["nodeName"]) for p in workers} == {"gpu"}
