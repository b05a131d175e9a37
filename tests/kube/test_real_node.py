"""The real node runs containers: a pod of the operator image (uid 1000, read-only root
filesystem) resolves cluster names through CoreDNS, reaches the apiserver through the
`kubernetes` Service (kube-proxy) with its ServiceAccount token, as in-cluster config does,
and reaches Temporal on the node network; `kubectl logs` and `kubectl exec` work."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tempotrain_dev.cluster import KWOK_NODE_ANNOTATION, NODE_POOL_LABEL

from tests.conftest import ClusterHandle
from tests.e2e.conftest import apply, kube_json
from tests.support import eventually

pytestmark = pytest.mark.kube

# What in-cluster clients (kr8s, kopf, client-go) do: the Service's env, the mounted token.
PROBE = """
import json, os, socket, ssl, sys, time, urllib.request
secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
print("dns", socket.gethostbyname("kubernetes.default.svc.cluster.local"), flush=True)
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
context = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
request = urllib.request.Request(
    f"https://{host}:{port}/version",
    headers={"Authorization": "Bearer " + open(f"{secrets}/token").read()},
)
print("apiserver", json.load(urllib.request.urlopen(request, context=context))["gitVersion"])
temporal_host, temporal_port = os.environ["TEMPORAL_ADDRESS"].rsplit(":", 1)
socket.create_connection((temporal_host, int(temporal_port)), timeout=5).close()
print("temporal reachable", flush=True)
time.sleep(3600)
"""


def probe_pod(image: str, temporal_address: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["python", "-c", PROBE],
                    "env": [{"name": "TEMPORAL_ADDRESS", "value": temporal_address}],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "terminationGracePeriodSeconds": 0,
        },
    }


async def test_the_real_node_is_ready_labelled_and_not_kwok(
    cluster: ClusterHandle, real_node: str
) -> None:
    node = json.loads(cluster.kubectl("get", "node", real_node, "-o", "json"))
    assert node["metadata"]["labels"][NODE_POOL_LABEL] == "cpu"
    assert node["metadata"]["labels"]["tempotrain.dev/runtime"] == "containerd"
    assert KWOK_NODE_ANNOTATION not in node["metadata"].get("annotations", {})
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert not node["spec"].get("taints")  # pods land here unless their namespace says kwok


async def test_a_pod_reaches_the_apiserver_by_its_service_and_temporal_and_answers_exec(
    cluster: ClusterHandle,
    pod_namespace: str,
    real_node: str,
    operator_image: str,
    temporal_address: str,
) -> None:
    ns = pod_namespace
    apply(cluster, ns, probe_pod(operator_image, temporal_address))

    async def probed() -> str | None:
        result = cluster.kubectl.run("logs", "probe", "-n", ns)
        return result.stdout if "temporal reachable" in result.stdout else None

    logs = await eventually(probed, within=120, what="the probe pod's checks in its log")
    assert "dns 10.96.0.1" in logs  # CoreDNS: the `kubernetes` Service's ClusterIP
    assert "apiserver v1.33." in logs  # through kube-proxy, authenticated by its token
    pod = kube_json(cluster, ns, "pod", "probe")
    assert pod["spec"]["nodeName"] == real_node
    identity = cluster.kubectl("exec", "probe", "-n", ns, "--", "id")
    assert identity.startswith("uid=1000"), identity
    touched = cluster.kubectl.run("exec", "probe", "-n", ns, "--", "touch", "/opt/x")
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr
