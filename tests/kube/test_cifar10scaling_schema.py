"""Cifar10Scaling's schema: each malformed manifest names what it expects (test_crd_schemas.py
applies them); the examples are accepted; a minimal spec gets its defaults; `kubectl get`
shows the printer columns and the `tempotrain` category."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_operator.cifar10_scaling import semantic_errors
from tempotrain_workers.api import Cifar10ScalingSpec, CompletionPolicy

from tests.conftest import ClusterHandle

INVALID = sorted((Path(__file__).parent / "manifests" / "invalid-c10s").glob("*.yaml"))
EXAMPLES = [
    REPO_ROOT / "examples" / "cifar10-scaling.yaml",
    REPO_ROOT / "examples" / "cifar10-scaling-local.yaml",
]


def _stored(cluster: ClusterHandle, namespace: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads(
        cluster.kubectl("get", "c10s", "-n", namespace, "-o", "json")
    )["items"]
    return items


def _minimal(name: str) -> dict[str, object]:
    return {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "Cifar10Scaling",
        "metadata": {"name": name},
        "spec": {"scales": [{"workers": 1}]},
    }


def test_there_are_at_least_ten_malformed_manifests_each_with_an_expectation() -> None:
    assert len(INVALID) >= 10
    for manifest in INVALID:
        first = manifest.read_text().splitlines()[0]
        assert first.startswith("# expect: ") and first.removeprefix("# expect: "), manifest.name
        assert yaml.safe_load(manifest.read_text())["kind"] == "Cifar10Scaling", manifest.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips_through_the_model(example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    assert manifest["kind"] == "Cifar10Scaling"
    assert len(manifest["metadata"]["name"]) <= 40
    spec = Cifar10ScalingSpec.model_validate(manifest["spec"])
    assert semantic_errors(spec) == []
    for given, read in zip(manifest["spec"]["scales"], spec.wire()["scales"], strict=True):
        assert {key: read[key] for key in given} == given
    assert spec.scales[0].workers == 1  # the baseline comes first


@pytest.mark.kube
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
async def test_example_is_accepted_by_the_apiserver(
    crds: None, cluster: ClusterHandle, namespace: str, example: Path
) -> None:
    result = cluster.kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(example), "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    accepted = json.loads(result.stdout)
    assert accepted["kind"] == "Cifar10Scaling"
    # Server-side: defaulted by the apiserver, and still nothing stored.
    assert accepted["spec"]["ray"]["readyTimeoutSeconds"] == 900
    assert not _stored(cluster, namespace)


@pytest.mark.kube
async def test_valid_minimal_manifest_gets_schema_defaults(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_minimal("defaults")))
    stored = json.loads(cluster.kubectl("get", "c10s", "defaults", "-n", namespace, "-o", "json"))
    spec = stored["spec"]
    assert spec["dataset"] == {"name": "cifar10"}
    assert spec["model"] == "simple_cnn"
    assert spec["useGpu"] is False
    assert spec["scales"] == [
        {"workers": 1, "epochs": 2, "batchSize": 128, "gpusPerWorker": 0, "cpusPerWorker": 1}
    ]
    assert spec["ray"]["onCompletion"] == "Delete"
    assert spec["ray"]["head"] == {"cpu": "2", "memory": "8Gi"}
    assert spec["ray"]["worker"]["memory"] == "8Gi"
    assert "address" not in spec["ray"] and "image" not in spec["ray"]
    assert spec["storage"] == {
        "snapshots": {"size": "20Gi", "reclaimPolicy": "Retain"},
        "runs": {"size": "20Gi", "reclaimPolicy": "Retain"},
    }
    assert spec["workers"] == {
        "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": [],
        "env": [],
        "envFrom": [],
    }
    # What the apiserver stored is exactly what the operator's model reads.
    model = Cifar10ScalingSpec.model_validate(spec)
    assert model.ray.on_completion == CompletionPolicy.DELETE
    assert model.wire() == spec
    assert semantic_errors(model) == []


@pytest.mark.kube
async def test_kubectl_get_shows_the_scaling_columns_and_the_tempotrain_category(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_minimal("columns")))
    header, row = cluster.kubectl("get", "c10s", "-n", namespace).splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "DONE",
        "BEST",
        "ACCURACY",
        "BEST",
        "SPEEDUP",
        "SUSPEND",
        "AGE",
    ]
    assert row.split()[0] == "columns"
    assert "RAY" not in header  # priority 1: only with -o wide
    assert "RAY" in cluster.kubectl("get", "c10s", "-n", namespace, "-o", "wide").splitlines()[0]

    bert = {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BertExperiment",
        "metadata": {"name": "bert"},
        "spec": {"model": {"name": "bert-base-uncased"}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bert))
    names = cluster.kubectl("get", "tempotrain", "-n", namespace, "-o", "name").split()
    assert sorted(names) == [
        "bertexperiment.tempotrain.dev/bert",
        "cifar10scaling.tempotrain.dev/columns",
    ]
