"""The generated CRDs are current, and the apiserver refuses malformed experiments of every
kind at `kubectl apply`, naming the field or the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tempotrain_workers.api import BertExperimentSpec, SweepSpec, expand
from tempotrain_workers.api.crdgen import KINDS, path_for, render

from tests.conftest import ClusterHandle
from tests.e2e.conftest import experiment

MANIFESTS = Path(__file__).parent / "manifests"
INVALID = [
    p
    for folder in ("invalid", "invalid-c10s", "invalid-binf")
    for p in sorted(MANIFESTS.glob(f"{folder}/*.yaml"))
]


def test_committed_crds_match_the_generator() -> None:
    for kind in KINDS:
        assert path_for(kind).read_text() == render(kind), (
            f"{path_for(kind)} is stale: run `make crds`"
        )


def test_there_are_at_least_twelve_malformed_manifests() -> None:
    assert len(INVALID) >= 12


@pytest.mark.kube
@pytest.mark.parametrize("manifest", INVALID, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_malformed_manifest_is_refused_with_its_field_path(
    crds: None, cluster: ClusterHandle, namespace: str, manifest: Path
) -> None:
    expected = manifest.read_text().splitlines()[0].removeprefix("# expect: ")
    result = cluster.kubectl.run("apply", "-n", namespace, "-f", str(manifest))
    assert result.returncode != 0, f"{manifest.name} was accepted"
    assert expected in result.stderr, result.stderr
    stored = cluster.kubectl("get", "bexp,c10s,binf", "-n", namespace, "-o", "json")
    assert not json.loads(stored)["items"]


@pytest.mark.kube
async def test_valid_minimal_manifest_gets_schema_defaults(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    manifest = {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BertExperiment",
        "metadata": {"name": "defaults"},
        "spec": {"model": {"name": "bert-base-uncased"}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    stored = json.loads(cluster.kubectl("get", "bexp", "defaults", "-n", namespace, "-o", "json"))
    spec = stored["spec"]
    assert spec["dataset"] == {
        "name": "glue",
        "config": "sst2",
        "trainSplit": "train",
        "evalSplit": "validation",
    }
    assert spec["training"]["saveSteps"] == 500 and spec["resources"]["gpus"] == 1
    # What the apiserver stored is exactly what the operator's model reads.
    assert BertExperimentSpec.model_validate(spec).training.learning_rate == 2e-5


@pytest.mark.kube
async def test_what_defines_a_run_cannot_change_under_it(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    manifest = {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BertExperiment",
        "metadata": {"name": "fixed"},
        "spec": {"model": {"name": "bert-base-uncased"}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    edit = json.dumps({"spec": {"training": {"epochs": 9}}})
    refused = cluster.kubectl.run(
        "patch", "bexp", "fixed", "-n", namespace, "--type=merge", "-p", edit
    )
    assert refused.returncode != 0, "an edit of spec.training was accepted"
    assert "spec.training cannot change once the experiment exists" in refused.stderr
    # What does not define the run may change.
    allowed = json.dumps({"spec": {"resources": {"cpu": "2"}}})
    cluster.kubectl("patch", "bexp", "fixed", "-n", namespace, "--type=merge", "-p", allowed)


def test_example_spec_round_trips_through_the_model() -> None:
    spec = experiment("x", "models/minilm")["spec"]
    assert BertExperimentSpec.model_validate(spec).wire()["training"]["saveSteps"] == 8


@pytest.mark.kube
async def test_the_sweep_example_is_accepted_with_its_four_trials(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    example = Path(__file__).parents[2] / "examples" / "bert-sweep.yaml"
    result = cluster.kubectl.run(
        "apply", "-n", namespace, "--dry-run=server", "-f", str(example), "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    sweep = SweepSpec.model_validate(json.loads(result.stdout)["spec"]["sweep"])
    assert len(expand(sweep)) == 4 and sweep.max_parallel == 2


@pytest.mark.kube
async def test_the_queueing_examples_are_accepted_by_kueues_and_our_crds(
    crds: None, cluster: ClusterHandle
) -> None:
    """docs/queueing.md's objects: Kueue's v1beta2 (the platform's Kueue CRDs) and the two
    labelled experiments; validated by the apiserver, nothing stored."""
    root = Path(__file__).parents[2] / "examples"
    for example in ("kueue-local.yaml", "bert-experiment-queued-local.yaml"):
        result = cluster.kubectl.run(
            "apply", "--dry-run=server", "-f", str(root / example), "-o", "json"
        )
        assert result.returncode == 0, f"{example}: {result.stderr}"
        items = json.loads(result.stdout).get("items") or []
        kinds = sorted(item["kind"] for item in items)
        if example == "kueue-local.yaml":
            assert kinds == [
                "ClusterQueue",
                "LocalQueue",
                "ResourceFlavor",
                "WorkloadPriorityClass",
                "WorkloadPriorityClass",
            ]
        else:
            assert kinds == ["BertExperiment", "BertExperiment"]
            for item in items:
                spec = BertExperimentSpec.model_validate(item["spec"])
                assert spec.resources.gpus == 0
                assert item["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
