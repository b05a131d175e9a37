"""BatchInference end to end: real apiserver + kwok, real Temporal, the operator and a host
worker as processes; the model is a BertExperiment's trained run or a model folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tempotrain_workers.checkpoints import file_digest
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    kube_json,
    until_released,
)
from tests.support import eventually

pytestmark = pytest.mark.kube

RESOURCE = "batchinferences.tempotrain.dev"


def batch_inference(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": {"file": "datasets/sentiment.jsonl", "textField": "sentence"},
        "chunkSize": 50,
        "batchSize": 16,
        "maxSeqLength": 32,
    }
    body.update(spec)
    body = {key: value for key, value in body.items() if value is not None}  # None: unset
    return {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BatchInference",
        "metadata": {"name": name},
        "spec": body,
    }


def _status(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube_json(cluster, namespace, RESOURCE, name).get("status") or {})


async def _finished(
    cluster: ClusterHandle, namespace: str, name: str, within: float
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        status = _status(cluster, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return await eventually(done, within=within, what=f"{name} to finish")


async def test_inference_waits_for_its_experiment_then_scores_and_a_second_job_skips_all(
    cluster: ClusterHandle, stack: Stack, tiny_bert: Path
) -> None:
    ns = stack.namespace
    trained = experiment("trained", stack.model(tiny_bert))
    trained["spec"]["training"]["epochs"] = 1
    apply(cluster, ns, trained)
    apply(
        cluster,
        ns,
        batch_inference(
            "scored",
            model={"fromExperiment": "trained"},
            workers=2,
            gpusPerWorker=1,
            outputs={"activations": {"pooling": "mean"}},
        ),
    )

    async def waiting() -> bool:
        condition = conditions_by_type(_status(cluster, ns, "scored")).get("ModelReady", {})
        return condition.get("reason") == "WaitingForExperiment"

    await eventually(waiting, within=30, what="ModelReady=False, WaitingForExperiment")
    assert _status(cluster, ns, "scored")["phase"] == "Pending"

    status = await _finished(cluster, ns, "scored", within=300)
    assert status["phase"] == "Succeeded", (status, stack.log("worker"))
    assert status["chunks"] == {"size": 50, "total": 8, "completed": 8, "skipped": 0, "failed": 0}
    assert status["chunksDone"] == "8/8" and status["rowsPerSecond"] > 0
    output = status["output"]
    assert output["rows"] == 400
    assert output["path"] == str(stack.runs / "inference" / "scored" / "output.parquet")
    assert file_digest(Path(output["path"])) == output["sha256"]
    table = pq.read_table(output["path"])
    assert table.column("row").to_pylist() == list(range(400))
    assert len(table.column("activation")[0]) == 32  # tiny BERT's hidden size
    conditions = conditions_by_type(status)
    assert conditions["ModelReady"]["reason"] == "ExperimentSucceeded"
    assert conditions["Completed"]["reason"] == "Succeeded"

    await until_released(cluster, ns, RESOURCE, "scored")
    deployment = kube_json(cluster, ns, "deployment", "scored-inference")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"trained-snapshots", "trained-runs"}  # the experiment's volumes
    assert deployment["spec"]["replicas"] == 0  # released when done (2 while running)
    claims_now = {c["metadata"]["name"] for c in kube_json(cluster, ns, "pvc")["items"]}
    assert claims_now == {"trained-snapshots", "trained-runs"}  # no volumes of its own

    header = cluster.kubectl("get", "binf", "-n", ns).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "CHUNKS", "SKIPPED", "ROWS/S", "SUSPEND", "AGE"]

    # The same job under another name, over the same output path, leaving the chunk size to
    # be measured: the size recorded with the output decides, and there is nothing to compute.
    started = time.monotonic()
    apply(
        cluster,
        ns,
        batch_inference(
            "rescored",
            model={"fromExperiment": "trained"},
            outputs={"path": "inference/scored", "activations": {"pooling": "mean"}},
            chunkSize=None,
        ),
    )
    again = await _finished(cluster, ns, "rescored", within=60)
    took = time.monotonic() - started
    assert again["phase"] == "Succeeded", again
    assert again["chunks"] == {"size": 50, "total": 8, "completed": 0, "skipped": 8, "failed": 0}
    assert again["output"] == output
    assert took < 20, f"a job with nothing to do took {took:.1f}s"


async def test_worker_killed_mid_job_and_an_interrupted_job_resumed_by_another(
    cluster: ClusterHandle, stack: Stack, minilm_classifier: Path
) -> None:
    ns = stack.namespace
    write_sentiment_jsonl(stack.snapshots / "datasets" / "many.jsonl", 1200)
    spec = {
        "model": {"name": stack.model(minilm_classifier)},
        "dataset": {"file": "datasets/many.jsonl", "textField": "sentence"},
        "chunkSize": 40,
        "workers": 2,
        "gpusPerWorker": 0,
        "maxSeqLength": 64,
    }
    chunks = stack.runs / "inference" / "shared" / "chunks"

    async def chunks_done(at_least: int) -> int | None:
        done = len(list(chunks.glob("*.json"))) if chunks.exists() else 0
        return done if done >= at_least else None

    # An interrupted job: deleted once a few chunks are done. Its chunks stay on the volume.
    apply(cluster, ns, batch_inference("interrupted", **spec, outputs={"path": "inference/shared"}))
    await eventually(lambda: chunks_done(3), within=180, what="three chunks of the first job")
    cluster.kubectl("delete", RESOURCE, "interrupted", "-n", ns, "--wait=true", "--timeout=60s")
    before = await eventually(lambda: chunks_done(3), within=5, what="its chunks to stay")
    assert before < 30, "the job finished before it could be interrupted"

    # Another job over the same path skips what is done; its worker is killed midway too.
    apply(cluster, ns, batch_inference("resumed", **spec, outputs={"path": "inference/shared"}))
    await eventually(lambda: chunks_done(before + 2), within=120, what="the re-run to progress")
    stack.kill("worker")
    stack.start_worker()
    status = await _finished(cluster, ns, "resumed", within=300)
    assert status["phase"] == "Succeeded", (status, stack.log("worker"))
    counts = status["chunks"]
    assert counts["total"] == 30 and counts["failed"] == 0
    assert counts["completed"] + counts["skipped"] == 30
    assert counts["skipped"] >= before, counts  # everything the first job finished
    assert status["output"]["rows"] == 1200
    assert not chunks.exists() or not list(chunks.glob("*.parquet"))  # merged, then removed


async def test_unknown_experiment_is_an_invalid_spec(cluster: ClusterHandle, stack: Stack) -> None:
    ns = stack.namespace
    apply(cluster, ns, batch_inference("orphan", model={"fromExperiment": "no-such-experiment"}))
    status = await _finished(cluster, ns, "orphan", within=30)
    assert status["phase"] == "Failed"
    condition = conditions_by_type(status)["SpecValid"]
    assert condition["reason"] == "InvalidSpec"
    assert "no BertExperiment 'no-such-experiment'" in condition["message"]
    assert not kube_json(cluster, ns, "deployments")["items"]  # nothing was started


async def test_a_failed_job_once_fixed_is_retried_in_place(
    cluster: ClusterHandle, stack: Stack, minilm_classifier: Path
) -> None:
    ns = stack.namespace
    spec = {
        "model": {"name": stack.model(minilm_classifier)},
        "dataset": {"file": "datasets/later.jsonl", "textField": "sentence"},
        "gpusPerWorker": 0,
    }
    apply(cluster, ns, batch_inference("later", **spec))
    status = await _finished(cluster, ns, "later", within=120)
    assert status["phase"] == "Failed" and "later.jsonl" in status["message"], status
    await until_released(cluster, ns, RESOURCE, "later")
    assert kube_json(cluster, ns, "deploy", "later-inference")["spec"]["replicas"] == 0

    # The data put where the spec says, then the same object run again.
    write_sentiment_jsonl(stack.snapshots / "datasets" / "later.jsonl", 120)
    retry = '{"spec":{"retryGeneration":1}}'
    cluster.kubectl("patch", RESOURCE, "later", "-n", ns, "--type=merge", "-p", retry)

    async def running_again() -> bool:
        return _status(cluster, ns, "later").get("phase") != "Failed"

    await eventually(running_again, within=60, what="the retry to take the job out of Failed")
    status = await _finished(cluster, ns, "later", within=180)
    assert status["phase"] == "Succeeded", (status, stack.log("operator"))
    assert status["output"]["rows"] == 120
