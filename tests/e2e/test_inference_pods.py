"""BatchInference in real pods: two inference pods of the workers image score a dataset from
a claim; one is SIGKILLed mid-job, its chunk is redone once its heartbeat times out, and the
merged output is byte-identical to an uninterrupted run's."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.provisioner import claim_directory
from tempotrain_workers.api import BatchInferenceInput
from tempotrain_workers.checkpoints import file_digest
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, apply, kill_container, kube_json
from tests.e2e.test_batch_inference import RESOURCE, batch_inference
from tests.e2e.test_real_pods import DATA_CLAIM, claim_manifest
from tests.support import eventually

pytestmark = pytest.mark.kube

ROWS = 1200
CHUNK = 40  # 30 chunks, a few seconds each on a CPU pod
MODEL = "models/minilm-classifier"
HEARTBEAT_TIMEOUT = BatchInferenceInput.model_fields["heartbeat_timeout_seconds"].default


def scoring(name: str, workers: int) -> dict[str, Any]:
    """The job on CPU pods small enough for the node, model and data from the data claim."""
    return batch_inference(
        name,
        model={"name": MODEL},
        dataset={"file": "datasets/many.jsonl", "textField": "sentence"},
        chunkSize=CHUNK,
        workers=workers,
        gpusPerWorker=0,
        maxSeqLength=64,
        resources={"cpu": "500m", "memory": "2Gi"},
        storage={"snapshots": {"existingClaim": DATA_CLAIM}},
    )


async def finished(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        status = kube_json(cluster, namespace, RESOURCE, name).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status: dict[str, Any] = await eventually(done, within=420, what=f"{name} to finish")
    assert status["phase"] == "Succeeded", status
    return status


async def test_an_inference_pod_killed_mid_job_changes_no_byte_of_the_output(
    cluster: ClusterHandle,
    pod_stack: Stack,
    node_runtime: Ctr,
    real_node: str,
    minilm_classifier: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = pod_stack.namespace
    apply(cluster, ns, claim_manifest(DATA_CLAIM))
    data = claim_directory(cluster.kubectl, ns, DATA_CLAIM)
    shutil.copytree(minilm_classifier, data / MODEL)
    # Readable by the pods' uid 1000, as a user makes data for them (pytest's folders are 0700).
    for path in [data / MODEL, *(data / MODEL).rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    write_sentiment_jsonl(data / "datasets" / "many.jsonl", ROWS)

    # The reference: one pod, never interrupted.
    apply(cluster, ns, scoring("reference", workers=1))
    reference = await finished(cluster, ns, "reference")

    # Two pods; one SIGKILLed while chunks are in flight on both.
    apply(cluster, ns, scoring("killed", workers=2))
    chunks = claim_directory(cluster.kubectl, ns, "killed-runs") / "inference" / "killed" / "chunks"

    async def two_pods_and_chunks_done() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in kube_json(cluster, ns, "pods", "")["items"]
            if p["metadata"]["labels"].get("tempotrain.dev/experiment") == "killed"
            and p["status"].get("phase") == "Running"
        ]
        done = len(list(chunks.glob("*.json"))) if chunks.exists() else 0
        return pods if len(pods) == 2 and done >= 2 else None

    pods = await eventually(
        two_pods_and_chunks_done, within=300, what="two inference pods with chunks done"
    )
    assert {p["spec"]["nodeName"] for p in pods} == {real_node}
    victim = sorted(pods, key=lambda p: str(p["metadata"]["name"]))[0]
    killed_at = time.monotonic()
    kill_container(node_runtime, victim)
    done_at_kill = len(list(chunks.glob("*.json")))
    assert done_at_kill < ROWS // CHUNK - 2, "the job was nearly done before the kill"
    status = await finished(cluster, ns, "killed")
    seconds = time.monotonic() - killed_at

    assert status["chunks"]["failed"] == 0 and status["output"]["rows"] == ROWS, status
    restarted = kube_json(cluster, ns, "pod", victim["metadata"]["name"])
    assert restarted["status"]["containerStatuses"][0]["restartCount"] >= 1
    # Byte for byte what the uninterrupted run wrote (the sha256 the job reports, and the
    # files themselves).
    assert status["output"]["sha256"] == reference["output"]["sha256"], (status, reference)
    output = claim_directory(cluster.kubectl, ns, "killed-runs") / "inference/killed/output.parquet"
    assert file_digest(output) == reference["output"]["sha256"]
    with capsys.disabled():
        print(
            f"\n[real pods] inference pod SIGKILLed at {done_at_kill}/{ROWS // CHUNK} chunks: "
            f"job done {seconds:.0f} s later "
            f"(a chunk in flight on it waits out the {HEARTBEAT_TIMEOUT:.0f} s heartbeat "
            f"timeout); the reference took "
            f"{reference.get('rowsPerSecond', 0):.0f} rows/s"
        )
