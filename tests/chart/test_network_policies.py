"""The chart's NetworkPolicies, evaluated against the labels of the pods the operator really
builds (its own builders): a Ray head's Jobs API only from the experiment's driver, worker
pods closed to everyone, the dev server's frontend only for TempoTrain's own pods. Label
drift on either side fails here (a policy that selects nothing protects nothing)."""

from __future__ import annotations

from typing import Any

import pytest
from tempotrain_dev.tools import Tools
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_inference_deployment,
    build_worker_deployment,
)
from tempotrain_operator.ray_children import build_ray_cluster
from tempotrain_workers.api import BatchInferenceSpec, BertExperimentSpec, Cifar10ScalingSpec
from tempotrain_workers.temporal_client import TemporalConnection

from tests.chart.test_chart import FULLNAME, NAMESPACE, Helm, of_kind

EXPERIMENTS = "ml"
Labels = dict[str, str]
WORKERS = WorkerConfig(
    image="img:1",
    temporal=TemporalConnection("t:7233"),
    training_queue="tq",
    eval_queue="eq",
    ray_queue="rq",
    inference_queue="iq",
)


def _experiment(spec: Any) -> Experiment[Any]:
    return Experiment(name="exp", namespace=EXPERIMENTS, uid="0123456789abcdef", spec=spec)


def _template_labels(deployment: dict[str, Any]) -> Labels:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def operator_pods() -> dict[str, Labels]:
    """Pod labels by role, from the operator's builders."""
    bert = _experiment(BertExperimentSpec.model_validate({"model": {"name": "m"}}))
    cifar = _experiment(Cifar10ScalingSpec.model_validate({"scales": [{"workers": 2}]}))
    job = _experiment(
        BatchInferenceSpec.model_validate({"model": {"name": "m"}, "dataset": {"name": "d"}})
    )
    ray = build_ray_cluster(cifar, WORKERS)["spec"]
    return {
        "training": _template_labels(build_worker_deployment(bert, WORKERS, "training")),
        "eval": _template_labels(build_worker_deployment(bert, WORKERS, "eval")),
        "driver": _template_labels(build_worker_deployment(cifar, WORKERS, "ray-driver")),
        "inference": _template_labels(build_inference_deployment(job, WORKERS)),
        "ray-head": dict(ray["headGroupSpec"]["template"]["metadata"]["labels"]),
        "ray-worker": dict(ray["workerGroupSpecs"][0]["template"]["metadata"]["labels"]),
    }


def selects(selector: dict[str, Any], labels: Labels) -> bool:
    """metav1.LabelSelector semantics (matchLabels and In/NotIn/Exists)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


def _peer_admits(peer: dict[str, Any], source: Labels, same_namespace: bool) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" not in peer and not same_namespace:
        return False  # a bare podSelector means the policy's own namespace
    return selects(peer.get("podSelector") or {}, source)


def admitted(
    policies: list[dict[str, Any]],
    namespace: str,
    target: Labels,
    source: Labels,
    port: int,
    source_namespace: str | None = None,
) -> bool:
    """Would a TCP connection from a pod labelled `source` reach `target` on `port`?"""
    source_namespace = source_namespace or namespace
    applying = [
        p
        for p in policies
        if p["metadata"]["namespace"] == namespace and selects(p["spec"]["podSelector"], target)
    ]
    if not applying:
        return True  # no policy selects the pod: Kubernetes admits everything
    for policy in applying:
        for rule in policy["spec"].get("ingress") or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            same = source_namespace == namespace
            if peers is None or any(_peer_admits(p, source, same) for p in peers):
                return True
    return False


@pytest.fixture(scope="module")
def helm(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools.helm / "helm", tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def policies(helm: Helm) -> list[dict[str, Any]]:
    objects = helm.objects(
        "--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{EXPERIMENTS}}}"
    )
    return of_kind(objects, "NetworkPolicy")


def test_a_ray_head_serves_its_jobs_api_and_client_only_to_the_driver(
    policies: list[dict[str, Any]],
) -> None:
    pods = operator_pods()
    head = pods["ray-head"]
    for port in (8265, 10001):
        assert admitted(policies, EXPERIMENTS, head, pods["driver"], port)
        for other in ("training", "eval", "inference"):
            assert not admitted(policies, EXPERIMENTS, head, pods[other], port), other
        assert not admitted(policies, EXPERIMENTS, head, {"app": "anything"}, port)
    # Ray's own traffic (GCS 6379, object manager, workers) between its pods.
    assert admitted(policies, EXPERIMENTS, head, pods["ray-worker"], 6379)
    assert admitted(policies, EXPERIMENTS, pods["ray-worker"], head, 12345)
    assert not admitted(policies, EXPERIMENTS, head, pods["driver"], 6379)
    assert not admitted(policies, EXPERIMENTS, pods["ray-worker"], pods["training"], 12345)


def test_worker_pods_accept_no_connection(policies: list[dict[str, Any]]) -> None:
    pods = operator_pods()
    for role in ("training", "eval", "driver", "inference"):
        for source in (pods["ray-head"], pods["training"], {"app": "anything"}):
            assert not admitted(policies, EXPERIMENTS, pods[role], source, 29500), role


def test_the_dev_server_answers_only_the_operator_and_worker_pods(
    helm: Helm, policies: list[dict[str, Any]]
) -> None:
    [server] = [p for p in policies if p["metadata"]["name"] == f"{FULLNAME}-temporal"]
    assert server["metadata"]["namespace"] == NAMESPACE
    dev_server = {
        "app.kubernetes.io/name": "tempotrain",
        "app.kubernetes.io/instance": "tt",
        "app.kubernetes.io/component": "temporal-dev-server",
    }
    operator = {**dev_server, "app.kubernetes.io/component": "operator"}
    pods = operator_pods()
    assert admitted(policies, NAMESPACE, dev_server, operator, 7233)
    for role in ("training", "eval", "driver", "inference"):
        assert admitted(policies, NAMESPACE, dev_server, pods[role], 7233, EXPERIMENTS), role
    assert not admitted(policies, NAMESPACE, dev_server, pods["ray-head"], 7233, EXPERIMENTS)
    assert not admitted(policies, NAMESPACE, dev_server, {"app": "x"}, 7233, "elsewhere")
    assert admitted(policies, NAMESPACE, dev_server, {"app": "x"}, 8233, "elsewhere")  # the UI


def test_extra_peers_and_switching_them_off(helm: Helm) -> None:
    namespaced = ("--set", "rbac.scope=namespaced", "--set", "watchNamespaces={a,b}")
    peer = "networkPolicy.rayDashboardFrom[0].namespaceSelector.matchLabels.team=ml"
    objects = of_kind(helm.objects(*namespaced, "--set", peer), "NetworkPolicy")
    heads = [p for p in objects if p["metadata"]["name"] == f"{FULLNAME}-ray-head"]
    assert sorted(p["metadata"]["namespace"] for p in heads) == ["a", "b"]
    peers = heads[0]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "ml"}}} in peers
    assert not of_kind(helm.objects("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
    # Cluster scope without networkPolicy.namespaces: only the dev server's (no namespace
    # to put the others in), and listing namespaces brings them.
    cluster = of_kind(helm.objects(), "NetworkPolicy")
    assert [p["metadata"]["name"] for p in cluster] == [f"{FULLNAME}-temporal"]
    listed = of_kind(helm.objects("--set", "networkPolicy.namespaces={ml}"), "NetworkPolicy")
    assert len(listed) == 4
