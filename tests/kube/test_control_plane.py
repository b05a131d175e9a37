"""The local control plane is a real one: version, nodes, controllers, scheduler, CRD schemas."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import kr8s.asyncio
import pytest
import yaml
from kr8s.asyncio.objects import Deployment, Pod, ReplicaSet

from tests.conftest import ClusterHandle
from tests.support import eventually, node_pool

pytestmark = pytest.mark.kube


async def test_server_reports_a_stamped_1_33_version(cluster: ClusterHandle) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert version["gitVersion"].startswith("v1.33."), version
    assert (version["major"], version["minor"]) == ("1", "33")


async def test_a_client_on_the_platform_kubeconfig_leaves_no_key_in_tmp(
    cluster: ClusterHandle,
) -> None:
    """Credentials are referenced by path: kr8s copies embedded ones to temporary files that
    it never removes, a private key in /tmp for every API client."""
    if os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip("a cluster of your own: its kubeconfig is yours")
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    users = [u["user"] for u in config["users"]]
    clusters = [c["cluster"] for c in config["clusters"]]
    embedded = [k for entry in users + clusters for k in entry if k.endswith("-data")]
    assert not embedded, embedded
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    api = await kr8s.asyncio.api(kubeconfig=str(cluster.kubeconfig))
    assert (await api.version())["major"] == "1"
    written = [f for f in set(temp.iterdir()) - before if f.is_file()]
    assert not [f for f in written if f.read_bytes().startswith(b"-----BEGIN")], written


async def test_kwok_nodes_cpu_and_gpu_pools_are_ready(
    cluster: ClusterHandle, kwok_nodes: list[str]
) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    kwok = [n for n in nodes if n["metadata"]["name"] in kwok_nodes]
    by_pool: dict[str, list[dict]] = {}
    for node in kwok:
        pool = node["metadata"]["labels"].get("tempotrain.dev/node-pool")
        by_pool.setdefault(pool, []).append(node)
    assert len(by_pool["cpu"]) == 2
    assert len(by_pool["gpu"]) == 2
    for node in by_pool["gpu"]:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    for node in kwok:  # kwok's taint: only namespaces that ask for kwok nodes get them
        assert {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"} in (
            node["spec"]["taints"]
        )
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]


async def test_kuberay_crds_are_installed(cluster: ClusterHandle) -> None:
    names = cluster.kubectl("get", "crd", "-o", "name").split()
    assert "customresourcedefinition.apiextensions.k8s.io/rayclusters.ray.io" in names


def _deployment(name: str, namespace: str, **pod_spec: object) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "busybox"}], **pod_spec},
            },
        },
    }


async def _pods(cluster: ClusterHandle, namespace: str) -> list[Pod]:
    return [p async for p in cluster.api.get("pods", namespace=namespace)]


@pytest.mark.usefixtures("kwok_nodes")  # busybox: never pulled, kwok runs nothing
async def test_deployment_pod_runs_on_a_kwok_node_and_is_garbage_collected(
    cluster: ClusterHandle, namespace: str
) -> None:
    deployment = await Deployment(_deployment("web", namespace), api=cluster.api)
    await deployment.create()

    async def running_pod() -> Pod | None:
        pods = await _pods(cluster, namespace)
        return next((p for p in pods if p.status.get("phase") == "Running"), None)

    pod = await eventually(running_pod, within=60, what="a Running pod (scheduler + kwok)")
    assert node_pool(cluster.kubectl, pod.spec["nodeName"]) == "cpu"  # GPU nodes: tainted
    replica_sets = [rs async for rs in cluster.api.get("replicasets", namespace=namespace)]
    assert len(replica_sets) == 1
    assert replica_sets[0].metadata["ownerReferences"][0]["uid"] == deployment.metadata["uid"]

    await deployment.delete(propagation_policy="Background")

    async def all_collected() -> bool:
        rs_left = [rs async for rs in cluster.api.get(ReplicaSet, namespace=namespace)]
        return not rs_left and not await _pods(cluster, namespace)

    await eventually(all_collected, within=60, what="ReplicaSet and Pod garbage collection")


@pytest.mark.usefixtures("kwok_nodes")  # busybox: never pulled, kwok runs nothing
async def test_gpu_pod_lands_on_a_gpu_node(cluster: ClusterHandle, namespace: str) -> None:
    manifest = _deployment(
        "trainer",
        namespace,
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": "2"}}
    await Deployment(manifest, api=cluster.api).create()

    async def scheduled_node() -> str | None:
        pods = await _pods(cluster, namespace)
        running = [p for p in pods if p.status.get("phase") == "Running"]
        return running[0].spec["nodeName"] if running else None

    node = await eventually(scheduled_node, within=60, what="the GPU pod to run")
    assert node_pool(cluster.kubectl, node) == "gpu"


def _widget_crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 1},
                                        "mode": {"type": "string", "enum": ["fast", "safe"]},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


async def test_structural_crd_schema_rejects_invalid_objects_with_field_path(
    cluster: ClusterHandle, namespace: str
) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.test.tempotrain.dev"  # cluster-scoped: unique per run
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_widget_crd(group)))
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s"
        )

        def apply(spec: dict) -> tuple[int, str]:
            obj = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w", "namespace": namespace},
                "spec": spec,
            }
            result = cluster.kubectl.run("apply", "-f", "-", input=json.dumps(obj))
            return result.returncode, result.stderr

        code, error = apply({"replicas": 0, "mode": "reckless"})
        assert code != 0
        assert "spec.replicas" in error and "should be greater than or equal to 1" in error
        assert "spec.mode" in error and 'Unsupported value: "reckless"' in error

        code, error = apply({"replicas": "three"})
        assert code != 0 and "spec.replicas" in error

        code, error = apply({"replicas": 2, "mode": "safe"})
        assert code == 0, error
    finally:
        cluster.kubectl("delete", f"crd/widgets.{group}", "--wait=false")
