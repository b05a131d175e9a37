"""BatchInference's schema: the malformed manifests in invalid-binf/ are refused
(test_crd_schemas.py applies them); the examples are accepted; a minimal spec gets its
defaults; `kubectl get binf` shows the printer columns; a finished experiment's claims become
the job's volumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_operator.batch_inference import semantic_errors
from tempotrain_operator.mapping import inference_input
from tempotrain_workers.api import BatchInferenceSpec, Pooling, RowSelection

from tests.conftest import ClusterHandle

INVALID = sorted((Path(__file__).parent / "manifests" / "invalid-binf").glob("*.yaml"))
EXAMPLES = [
    REPO_ROOT / "examples" / "batch-inference.yaml",
    REPO_ROOT / "examples" / "batch-inference-local.yaml",
]


def _minimal(name: str) -> dict[str, object]:
    return {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BatchInference",
        "metadata": {"name": name},
        "spec": {"model": {"name": "bert-base-uncased"}, "dataset": {"name": "imdb"}},
    }


def test_every_malformed_manifest_names_its_expectation() -> None:
    assert len(INVALID) >= 10
    for manifest in INVALID:
        first = manifest.read_text().splitlines()[0]
        assert first.startswith("# expect: ") and first.removeprefix("# expect: "), manifest.name
        assert yaml.safe_load(manifest.read_text())["kind"] == "BatchInference", manifest.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips_through_the_model_into_a_workflow_input(example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    name = manifest["metadata"]["name"]
    spec = BatchInferenceSpec.model_validate(manifest["spec"])
    assert semantic_errors(spec) == []
    assert spec.model.from_experiment  # both score what an experiment trained
    request = inference_input(name, "default", "uid-1234", spec, "run", "op-queue", "inf-queue")
    assert request.job.model_run == "run" and request.job.model_name is None
    assert request.job.output_dir == f"inference/{name}"
    assert request.range == RowSelection(start=0, end=None)  # every row
    # Chunks in flight: one scored per GPU of each pod, and one more per pod prepared.
    pods, gpus = manifest["spec"]["workers"], manifest["spec"]["gpusPerWorker"]
    assert request.workers == pods * (max(1, gpus) + 1)
    assert request.status_target is not None and request.status_target.kind == "BatchInference"


def test_a_spec_with_a_range_and_a_model_name_maps_as_given() -> None:
    spec = BatchInferenceSpec.model_validate(
        {
            "model": {"name": "models/scorer"},
            "dataset": {"file": "data/rows.parquet", "textField": "review"},
            "range": {"start": 100, "end": 350},
            "outputs": {"path": "shared/scores", "activations": {"layer": 3, "pooling": "mean"}},
        }
    )
    request = inference_input("job", "ns", "uid", spec, None, "op", "inf")
    job = request.job
    assert (job.model_name, job.model_run, job.dataset_name) == (
        "models/scorer",
        None,
        "data/rows.parquet",
    )
    assert job.output_dir == "shared/scores" and job.text_field == "review"
    assert job.activations is not None and job.activations.pooling == Pooling.MEAN
    assert request.range == RowSelection(start=100, end=350)
    assert semantic_errors(
        spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"config": "x"})})
    ) == ["dataset.config applies to Hub datasets, not to dataset.file"]


@pytest.mark.kube
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
async def test_example_is_accepted_by_the_apiserver(
    crds: None, cluster: ClusterHandle, namespace: str, example: Path
) -> None:
    result = cluster.kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(example), "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "BatchInference"


@pytest.mark.kube
async def test_minimal_manifest_gets_defaults_and_the_columns_show(
    crds: None, cluster: ClusterHandle, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_minimal("defaults")))
    stored = json.loads(cluster.kubectl("get", "binf", "defaults", "-n", namespace, "-o", "json"))
    spec = stored["spec"]
    assert spec["workers"] == 1 and spec["gpusPerWorker"] == 1
    assert "chunkSize" not in spec  # measured by the job's plan (and recorded with its output)
    assert spec["range"] == {"start": 0}
    assert spec["retainChunks"] is False
    assert spec["dataset"] == {"name": "imdb", "split": "train", "textField": "text"}
    model = BatchInferenceSpec.model_validate(spec)
    assert model.wire() == spec  # what the apiserver stored is what the operator reads
    header = cluster.kubectl("get", "binf", "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "CHUNKS", "SKIPPED", "ROWS/S", "SUSPEND", "AGE"]
    assert "OUTPUT" in cluster.kubectl("get", "binf", "-n", namespace, "-o", "wide")
    names = cluster.kubectl("get", "tempotrain", "-n", namespace, "-o", "name").split()
    assert names == ["batchinference.tempotrain.dev/defaults"]
