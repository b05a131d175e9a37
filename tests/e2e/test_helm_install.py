"""The Helm chart on the local control plane. Installed with the images built here, its
operator runs in its pod under the chart's ServiceAccount and trains a BertExperiment in pods,
with either RBAC scope (namespaced on the session's platform, cluster-wide on a platform of its
own); as that ServiceAccount its RBAC also suffices for a Cifar10Scaling's RayCluster.
Uninstalling leaves the CRDs (deleting them would delete every CR) and the Retain claims."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kr8s.asyncio
import pytest
import yaml
from tempotrain_dev.commands import Queues
from tempotrain_dev.platform import Platform
from tempotrain_dev.real_node import NODE_NAME
from tempotrain_dev.tools import REPO_ROOT, Tools
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, apply, experiment, experiment_status, kube_json
from tests.e2e.test_cifar10_scaling import scaling, until_no_ray_cluster
from tests.e2e.test_real_pods import data_volume as _data_volume
from tests.e2e.test_real_pods import pod_experiment
from tests.support import Kubectl, eventually

pytestmark = pytest.mark.kube
CHART = REPO_ROOT / "charts" / "tempotrain"
CRD_NAMES = [p.name.removesuffix(".yaml") for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))]


def helm(tools: Tools, cluster: ClusterHandle, *args: str) -> str:
    result = subprocess.run(
        [str(tools.helm / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def token_kubeconfig(cluster: ClusterHandle, namespace: str, account: str, target: Path) -> Path:
    """The admin kubeconfig's server and CA, but authenticated as the ServiceAccount."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": admin["clusters"][0]["name"], "user": account},
            }
        ],
        "current-context": account,
    }
    target.write_text(yaml.safe_dump(config))
    return target


async def test_chart_installs_its_rbac_suffices_and_uninstall_keeps_only_the_crds(
    crds: None,
    cluster: ClusterHandle,
    tools: Tools,
    temporal_address: str,
    namespace: str,
    minilm_path: Path,
    tmp_path: Path,
) -> None:
    release = f"tt-{uuid.uuid4().hex[:6]}"
    # --take-ownership: the session's `crds` fixture applied the CRDs already.
    helm(
        tools,
        cluster,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--take-ownership",
        "--wait",
        "--timeout",
        "120s",
        "--set",
        "operator.image.tag=test",
        # Namespaced RBAC (a Role in the watched namespace), like the operator below, which
        # watches only this test's namespace.
        "--set",
        "rbac.scope=namespaced",
        "--set",
        f"watchNamespaces={{{namespace}}}",
    )

    pods = kube_json(cluster, namespace, "pods", "")["items"]
    operator_pods = [
        p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    assert len(operator_pods) == 1, [p["metadata"]["name"] for p in pods]
    assert operator_pods[0]["status"]["phase"] == "Running"
    assert operator_pods[0]["spec"]["nodeName"]
    account = operator_pods[0]["spec"]["serviceAccountName"]

    # RBAC is sufficient: the operator as that ServiceAccount, not as admin, runs a
    # BertExperiment and a Cifar10Scaling (PVCs, Deployments, scaling, RayCluster, status).
    as_operator = token_kubeconfig(cluster, namespace, account, tmp_path / "operator.kubeconfig")
    denied = cluster.kubectl.run(
        "--kubeconfig", str(as_operator), "get", "secrets", "-n", namespace
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()  # it is not admin
    suffix = uuid.uuid4().hex[:8]
    stack = Stack(
        namespace=namespace,
        kubeconfig=as_operator,
        temporal_address=temporal_address,
        root=tmp_path,
        queues=Queues(f"train-{suffix}", f"eval-{suffix}", f"op-{suffix}", f"ray-{suffix}"),
    )
    write_sentiment_jsonl(stack.snapshots / "datasets" / "sentiment.jsonl", 400)
    stack.start_operator()
    stack.start_worker()
    try:
        apply(cluster, namespace, experiment("bert", stack.model(minilm_path)))
        one_scale = [{"workers": 1, "epochs": 1, "batchSize": 64}]
        apply(cluster, namespace, scaling("ray", scales=one_scale))

        async def both_succeeded() -> bool:
            phases = {
                experiment_status(cluster, namespace, "bert").get("phase"),
                experiment_status(cluster, namespace, "ray", "cifar10scalings").get("phase"),
            }
            if "Failed" in phases:
                raise AssertionError(stack.log("operator"))
            return phases == {"Succeeded"}

        await eventually(both_succeeded, within=300, what="both experiments Succeeded")

        await until_no_ray_cluster(cluster, namespace, within=60)
    finally:
        stack.stop_all()
    log = (tmp_path / "operator.log").read_text(errors="replace")
    assert "forbidden" not in log.lower(), log[-3000:]  # kr8s and kopf both say 403 Forbidden

    helm(tools, cluster, "uninstall", release, "-n", namespace, "--wait")
    left: dict[str, Any] = json.loads(
        cluster.kubectl(
            "get",
            "deploy,sa,role,rolebinding,svc",
            "-n",
            namespace,
            "-l",
            f"app.kubernetes.io/instance={release}",
            "-o",
            "json",
        )
    )
    assert left["items"] == []
    cluster_wide = cluster.kubectl(
        "get", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}"
    )
    assert release not in cluster_wide
    for crd in CRD_NAMES:  # kept: helm.sh/resource-policy: keep
        kept = json.loads(cluster.kubectl("get", "crd", crd, "-o", "json"))
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def _split(image: str) -> tuple[str, str]:
    repository, tag = image.rsplit(":", 1)
    return repository, tag


async def test_helm_installed_operator_runs_in_its_pod_and_trains_an_experiment_in_pods(
    crds: None,
    cluster: ClusterHandle,
    tools: Tools,
    temporal_address: str,
    pod_namespace: str,
    real_node: str,
    operator_image: str,
    worker_image: str,
    minilm_path: Path,
) -> None:
    """What a user installs: the chart with its images, the operator in its pods under the
    chart's ServiceAccount (in-cluster config, namespaced RBAC), two replicas sharing the
    experiments (each holding a Lease), and a BertExperiment trained and evaluated in pods
    that the replica owning it made."""
    install = ChartInstall(
        release=f"tt-{uuid.uuid4().hex[:6]}",
        namespace=pod_namespace,
        operator_image=operator_image,
        worker_image=worker_image,
        temporal_address=temporal_address,
        # A Role in the one namespace it watches; this test's queue: no other operator's.
        values={
            "rbac.scope": "namespaced",
            "watchNamespaces": f"{{{pod_namespace}}}",
            "operator.replicas": "2",
        },
    )
    await chart_trains_in_pods(cluster, tools, install, pod_namespace, real_node, minilm_path)


async def test_cluster_scoped_chart_trains_an_experiment_in_pods_on_a_platform_of_its_own(
    tools: Tools, operator_image: str, worker_image: str, minilm_path: Path, short_dir: Path
) -> None:
    """rbac.scope=cluster, as most users install it: a ClusterRole, every namespace watched,
    the experiment in a namespace other than the chart's. On a platform of its own: such an
    operator reconciles every experiment it can see, the other tests' too."""
    if os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip("a cluster-wide operator needs a platform of its own")
    platform = Platform(short_dir / "platform")
    try:
        platform.up(log=lambda _: None)
        assert platform.node is not None, platform.no_node_reason
        platform.images(["operator", "workers"], log=lambda _: None)
        kubeconfig = platform.cluster.kubeconfig
        cluster = ClusterHandle(
            kubeconfig,
            await kr8s.asyncio.api(kubeconfig=str(kubeconfig)),
            Kubectl(tools.kubectl, kubeconfig),
        )
        for namespace in ("tempotrain-system", "research"):
            cluster.kubectl("create", "namespace", namespace)
        install = ChartInstall(
            release="tempotrain",
            namespace="tempotrain-system",
            operator_image=operator_image,
            worker_image=worker_image,
            temporal_address=platform.temporal.address,
            values={"rbac.scope": "cluster"},
        )
        await chart_trains_in_pods(cluster, tools, install, "research", NODE_NAME, minilm_path)
    finally:
        platform.down(log=lambda _: None)
    assert platform.leftovers() == []


@dataclass(frozen=True)
class ChartInstall:
    release: str
    namespace: str
    operator_image: str
    worker_image: str
    temporal_address: str
    values: dict[str, str]

    def set_args(self) -> list[str]:
        operator_repository, operator_tag = _split(self.operator_image)
        workers_repository, workers_tag = _split(self.worker_image)
        values = {
            "operator.image.repository": operator_repository,
            "operator.image.tag": operator_tag,
            "operator.image.pullPolicy": "Never",  # built here; there is no registry
            "operator.resyncSeconds": "10",
            "workers.image.repository": workers_repository,
            "workers.image.tag": workers_tag,
            "temporal.devServer.enabled": "false",
            "temporal.address": self.temporal_address,
            "queues.status": f"operator-{self.release}",  # no other test's worker pushes here
            **self.values,
        }
        # --set-string for the tags: a content hash of digits only (438800149416) would
        # otherwise reach the chart as a number, which its schema refuses.
        return [
            arg
            for key, value in values.items()
            for arg in ("--set-string" if key.endswith(".tag") else "--set", f"{key}={value}")
        ]


async def chart_trains_in_pods(
    cluster: ClusterHandle,
    tools: Tools,
    install: ChartInstall,
    namespace: str,
    node: str,
    minilm_path: Path,
) -> None:
    """Install the chart; its operator, in its pod on `node`, trains and evaluates a
    BertExperiment in `namespace` in pods, without one 403; uninstall it. The CRDs and the
    Retain claims stay."""
    # --take-ownership: the CRDs may be there already (the session's `crds` fixture). --wait:
    # the operator pod is Ready, i.e. kopf's /healthz answers from inside it.
    helm(tools, cluster, "install", install.release, str(CHART), "-n", install.namespace,
         "--take-ownership", "--wait", "--timeout", "180s", *install.set_args())  # fmt: skip
    try:
        operator_pods = [
            p
            for p in kube_json(cluster, install.namespace, "pods")["items"]
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
        ]
        assert len(operator_pods) == int(install.values.get("operator.replicas", "1"))
        for operator_pod in operator_pods:
            assert operator_pod["spec"]["nodeName"] == node
            assert operator_pod["spec"]["containers"][0]["image"] == install.operator_image
        operator_names = sorted(p["metadata"]["name"] for p in operator_pods)
        for crd in CRD_NAMES:  # installed by the chart where they were not yet
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")

        data_volume = await _data_volume(cluster, namespace, minilm_path)
        apply(cluster, namespace, pod_experiment("sentiment", epochs=1))

        async def succeeded() -> dict[str, Any] | None:
            status = experiment_status(cluster, namespace, "sentiment")
            if status.get("phase") == "Failed":
                raise AssertionError(status)
            return status if status.get("phase") == "Succeeded" else None

        status = await eventually(succeeded, within=420, what="the experiment to succeed")
        assert 0.0 <= status["metrics"]["evalAccuracy"] <= 1.0, status
        assert (data_volume / "datasets" / "sentiment.jsonl").exists()
        for operator_name in operator_names:
            log = cluster.kubectl("logs", operator_name, "-n", install.namespace)
            assert "forbidden" not in log.lower(), log[-3000:]  # RBAC sufficed, as this account
            if len(operator_names) > 1:  # each replica saw the others, by its Lease
                assert f"live operator replicas: {', '.join(operator_names)}" in log, log[-3000:]

        # The experiment goes first (its operator removes the finalizer), then the chart.
        cluster.kubectl("delete", "bertexperiment", "sentiment", "-n", namespace, "--timeout=120s")
    finally:
        helm(tools, cluster, "uninstall", install.release, "-n", install.namespace, "--wait")
    for crd in CRD_NAMES:  # kept: helm.sh/resource-policy: keep
        cluster.kubectl("get", "crd", crd)
    # The Retain claims outlive both the experiment and the chart: the checkpoints are safe.
    claims = {c["metadata"]["name"] for c in kube_json(cluster, namespace, "pvc")["items"]}
    assert "sentiment-runs" in claims, claims
