"""BertExperiment in real pods, with no host worker: the operator creates the worker
Deployments, and training and evaluation run in containers of the workers image on the real
node, on their PVCs, as uid 1000 on a read-only root filesystem, reaching Temporal and the
apiserver over the node's network. Interrupted as a cluster interrupts pods: a pod deleted
(SIGTERM, then a replacement) and a container SIGKILLed (restarted in place)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.prometheus_server import LocalPrometheus
from tempotrain_dev.provisioner import claim_directory
from tempotrain_workers.checkpoints import latest_verified
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.trainer_main import TrainerJob

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    kill_container,
    kube_json,
    pod_ready,
    until_released,
)
from tests.support import eventually

pytestmark = pytest.mark.kube

RESOURCE = "bertexperiments.tempotrain.dev"
SAVE_STEPS = 8
DATA_CLAIM = "data"
MODEL_DIR = "models/all-minilm-l6-v2"


async def data_volume(cluster: ClusterHandle, namespace: str, model: Path) -> Path:
    """A claim holding the model and a dataset, as a user prepares one before training."""
    apply(cluster, namespace, claim_manifest(DATA_CLAIM))
    root = claim_directory(cluster.kubectl, namespace, DATA_CLAIM)
    shutil.copytree(model, root / MODEL_DIR)
    write_sentiment_jsonl(root / "datasets" / "sentiment.jsonl", 400)
    return root


def pod_experiment(name: str, epochs: int, **overrides: Any) -> dict[str, Any]:
    """The e2e experiment, on CPU, small enough for the node, data from the data claim."""
    spec = {
        "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
        "storage": {"snapshots": {"existingClaim": DATA_CLAIM}},
    }
    manifest = experiment(name, MODEL_DIR, **(spec | overrides))
    manifest["spec"]["training"] |= {"epochs": epochs, "saveSteps": SAVE_STEPS}
    return manifest


def training_pods(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    pods = kube_json(cluster, namespace, "pods")["items"]
    return [
        p
        for p in pods
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "training-worker"
        and not p["metadata"].get("deletionTimestamp")
    ]


def reached_step(run_dir: Path) -> int:
    """The last step the trainer reported: progress.json is rewritten every 2 s of training
    and on every save (so it holds the step of a checkpoint just written)."""
    try:
        return int(json.loads((run_dir / "progress.json").read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def latest_attempt(run_dir: Path) -> tuple[int, int]:
    """(attempt, step it resumed from) of the newest training attempt."""
    jobs = {int(p.stem.rsplit("-", 1)[1]): p for p in run_dir.glob(".job-attempt-*.json")}
    if not jobs:
        return 0, 0
    attempt = max(jobs)
    return attempt, TrainerJob.model_validate_json(jobs[attempt].read_text()).resumed_from_step or 0


def snapshot_hash(data_root: Path) -> str:
    metadata = next(data_root.glob("sentiment-*/metadata.json"))
    return str(json.loads(metadata.read_text())["snapshot_hash"])


async def test_experiment_trains_in_its_pods_through_a_pod_deletion_and_a_container_kill(
    cluster: ClusterHandle,
    pod_stack: Stack,
    real_node: str,
    node_runtime: Ctr,
    temporal: TemporalHandle,
    minilm_path: Path,
    prometheus: LocalPrometheus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = pod_stack.namespace
    data = await data_volume(cluster, ns, minilm_path)
    probe = {"name": "TEMPOTRAIN_PROBE", "value": "from-the-experiment"}
    # Long enough for three interruptions mid-run: with checkpoints written in the
    # background the trainer no longer waits a second or so per save.
    apply(cluster, ns, pod_experiment("sentiment", epochs=14, workers={"env": [probe]}))

    async def both_ready() -> list[dict[str, Any]] | None:
        """Running, and Ready: their readiness probes say they poll Temporal."""
        pods = kube_json(cluster, ns, "pods")["items"]
        ready = [p for p in pods if pod_ready(p)]
        return ready if len(ready) == 2 else None

    pods = await eventually(both_ready, within=180, what="training and eval pods Ready")
    assert {p["spec"]["nodeName"] for p in pods} == {real_node}
    # What the pods carry: the experiment's env, no GPU they did not ask for (the NVIDIA
    # runtime would give them all), and no API token (the workers never call the API).
    seen = cluster.kubectl(
        "exec", "deploy/sentiment-eval", "-n", ns, "--", "sh", "-c",
        "printenv TEMPOTRAIN_PROBE NVIDIA_VISIBLE_DEVICES; "
        "test -e /var/run/secrets/kubernetes.io/serviceaccount && echo token || echo no-token",
    )  # fmt: skip
    assert seen.split() == ["from-the-experiment", "void", "no-token"], seen
    run_dir = claim_directory(cluster.kubectl, ns, "sentiment-runs") / "sentiment"

    async def checkpointed() -> int | None:
        status = kube_json(cluster, ns, RESOURCE, "sentiment").get("status", {})
        return (status.get("latestCheckpoint") or {}).get("step")

    await eventually(checkpointed, within=300, what="a first checkpoint in status")
    trainer = training_pods(cluster, ns)[0]
    trainer_pod = trainer["metadata"]["name"]
    assert "polling" in cluster.kubectl("logs", trainer_pod, "-n", ns)

    # The training pod's /metrics (its port named `metrics`), scraped by the platform's
    # Prometheus at the pod's own address: its steps and its saves are there.
    port = next(p for p in trainer["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    scrape = f"pod-{trainer_pod}"
    address = f"{trainer['status']['podIP']}:{port['containerPort']}"
    prometheus.add_targets(scrape, [address], {"pod": trainer_pod})
    try:

        async def scraped() -> list[dict[str, Any]] | None:
            query = f'tempotrain_checkpoints_saved_total{{pod="{trainer_pod}"}} > 0'
            return prometheus.query(query) or None

        found = await eventually(scraped, within=60, what="the pod's checkpoint saves in PromQL")
        assert found[0]["metric"]["run"] == "sentiment", found
        steps = prometheus.query(f'tempotrain_training_steps_total{{pod="{trainer_pod}"}}')
        assert steps and float(steps[0]["value"][1]) >= SAVE_STEPS, steps
    finally:
        prometheus.remove_targets(scrape)

    # 1. The pod deleted: SIGTERM, the trainer saves where it is, a new pod resumes there.
    cluster.kubectl("delete", "pod", trainer_pod, "-n", ns, "--wait=true", "--timeout=300s")
    stopped_at = reached_step(run_dir)
    verified = latest_verified(run_dir, snapshot_hash(data))
    assert verified is not None and verified.step == stopped_at, (verified, stopped_at)

    async def resumed() -> tuple[int, int] | None:
        attempt = latest_attempt(run_dir)
        return attempt if attempt[0] >= 2 and reached_step(run_dir) > attempt[1] else None

    attempt, resumed_from = await eventually(resumed, within=300, what="the replacement to train")
    assert stopped_at - resumed_from == 0, "steps recomputed after a pod deletion"
    assert training_pods(cluster, ns)[0]["metadata"]["name"] != trainer_pod

    # 2. The container SIGKILLed: nothing saved; the retry resumes from the last checkpoint.
    await eventually(
        lambda: reached_step(run_dir) >= resumed_from + SAVE_STEPS + 2,
        within=300,
        what="another checkpoint before the kill",
    )
    killed_at = time.monotonic()
    kill_container(node_runtime, training_pods(cluster, ns)[0])

    async def restarted() -> bool:
        statuses = training_pods(cluster, ns)[0]["status"].get("containerStatuses") or []
        return bool(statuses) and statuses[0]["restartCount"] >= 1

    await eventually(restarted, within=120, what="the killed container to be restarted")
    killed_step = reached_step(run_dir)

    async def retried() -> tuple[int, int] | None:
        latest = latest_attempt(run_dir)
        return latest if latest[0] > attempt and reached_step(run_dir) > latest[1] else None

    _, resumed_from = await eventually(retried, within=400, what="training to resume")
    seconds = time.monotonic() - killed_at
    assert killed_step - resumed_from <= SAVE_STEPS, (killed_step, resumed_from)
    # The 15 s heartbeat timeout, the retry and the trainer's start: seconds, not minutes.
    assert seconds < 60, f"SIGKILL → next training step took {seconds:.0f} s"
    with capsys.disabled():
        print(
            f"\n[real pods] SIGKILL → next training step: {seconds:.0f} s; recomputed "
            f"{killed_step - resumed_from} steps (save interval {SAVE_STEPS})"
        )

    # 3. It finishes: trained, evaluated, reported.
    async def finished() -> str | None:
        phase = kube_json(cluster, ns, RESOURCE, "sentiment").get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    assert await eventually(finished, within=600, what="Succeeded") == "Succeeded", kube_json(
        cluster, ns, RESOURCE, "sentiment"
    )["status"]
    status = kube_json(cluster, ns, RESOURCE, "sentiment")["status"]
    assert status["metrics"]["evalAccuracy"] > 0.8
    assert conditions_by_type(status)["Completed"]["reason"] == "Succeeded"
    # Three attempts: the pod deletion (a worker shutdown, retried at once after its save)
    # and the SIGKILL (a heartbeat timeout) each ended one; both made progress, so the run
    # was never degraded for long, and is not now.
    assert status["attempts"] == 3, status
    assert status["lastFailure"]["reason"] == "HeartbeatTimeout", status["lastFailure"]
    assert conditions_by_type(status)["Degraded"]["status"] == "False", status["conditions"]
    row = cluster.kubectl("get", "bexp", "sentiment", "-n", ns, "--no-headers").split()
    assert row[1] == "Succeeded" and row[2] == "100", row  # PHASE, PROGRESS (%)
    assert all(value != "<none>" for value in row[3:6]), row  # STEP, LOSS, ACCURACY
    markers = sorted(run_dir.glob("checkpoint-*/tempotrain-checkpoint.json"))
    assert markers, "no checkpoint marker on the runs claim"
    assert (run_dir / "model.safetensors").is_file()
    # The pods go only once the workflow has closed: its last task runs on them.
    await until_released(cluster, ns, RESOURCE, "sentiment")
    handle = temporal.client.get_workflow_handle(status["workflowId"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    for deployment in kube_json(cluster, ns, "deployments")["items"]:
        assert deployment["spec"]["replicas"] == 0


async def test_deleting_the_experiment_cancels_it_stops_its_pods_and_keeps_its_claims(
    cluster: ClusterHandle,
    pod_stack: Stack,
    temporal: TemporalHandle,
    minilm_path: Path,
) -> None:
    ns = pod_stack.namespace
    data = await data_volume(cluster, ns, minilm_path)
    apply(cluster, ns, pod_experiment("doomed", epochs=20))

    async def training_with_checkpoint() -> bool:
        status = kube_json(cluster, ns, RESOURCE, "doomed").get("status", {})
        return status.get("phase") == "Training" and bool(status.get("latestCheckpoint"))

    await eventually(training_with_checkpoint, within=300, what="training with a checkpoint")
    workflow_id = kube_json(cluster, ns, RESOURCE, "doomed")["status"]["workflowId"]
    run_dir = claim_directory(cluster.kubectl, ns, "doomed-runs") / "doomed"
    cluster.kubectl("delete", RESOURCE, "doomed", "-n", ns, "--wait=false")

    async def gone() -> bool:
        return not kube_json(cluster, ns, RESOURCE)["items"]

    # The finalizer holds the CR (and so its pods) until the cancelled workflow has closed.
    await eventually(gone, within=240, what="the CR to be deleted")
    description = await temporal.client.get_workflow_handle(workflow_id).describe()
    assert description.status == WorkflowExecutionStatus.CANCELED

    async def no_pods() -> bool:
        return not kube_json(cluster, ns, "pods")["items"]

    await eventually(no_pods, within=120, what="the worker pods to be gone")
    claims = {c["metadata"]["name"] for c in kube_json(cluster, ns, "pvc")["items"]}
    assert claims == {DATA_CLAIM, "doomed-runs"}  # Retain (the default): not owned, kept
    # The cancelled trainer saved on its way out, on the claim.
    verified = latest_verified(run_dir, snapshot_hash(data))
    assert verified is not None and verified.step == reached_step(run_dir)


async def test_pods_that_cannot_start_say_why_and_their_experiment_can_still_be_deleted(
    crds: None,
    cluster: ClusterHandle,
    temporal: TemporalHandle,
    pod_namespace: str,
    worker_image: str,
    tmp_path: Path,
) -> None:
    ns = pod_namespace
    stack = fast_resync_operator(ns, cluster, temporal, tmp_path, worker_image)
    try:
        apply(cluster, ns, claim_manifest(DATA_CLAIM))
        absent = {"image": "localhost/tempotrain/workers:absent", "imagePullPolicy": "Never"}
        apply(cluster, ns, pod_experiment("no-image", epochs=1, workers=absent))
        apply(
            cluster,
            ns,
            pod_experiment(
                "no-claim", epochs=1, storage={"snapshots": {"existingClaim": "nowhere"}}
            ),
        )
        unknown_class = {
            "snapshots": {"existingClaim": DATA_CLAIM},
            "runs": {"storageClassName": "nowhere"},
        }
        apply(cluster, ns, pod_experiment("no-class", epochs=1, storage=unknown_class))

        await eventually(
            lambda: workers_not_ready(
                cluster, ns, "no-image", "ImageUnavailable", "ErrImageNeverPull"
            ),
            within=150,
            what="no-image's WorkersReady: ImageUnavailable, ErrImageNeverPull",
        )
        await eventually(
            lambda: workers_not_ready(cluster, ns, "no-claim", "Unschedulable", "nowhere"),
            within=150,
            what="no-claim's WorkersReady: Unschedulable, its claim 'nowhere'",
        )
        missing = conditions_by_type(kube_json(cluster, ns, RESOURCE, "no-claim")["status"])
        assert missing["StorageReady"]["reason"] == "ClaimMissing", missing
        no_class = await eventually(
            lambda: condition_false(cluster, ns, "no-class", "StorageReady"),
            within=120,
            what="no-class's StorageReady",
        )
        # The PV controller's own words, and what to set.
        assert no_class["reason"] == "ClaimPending", no_class
        assert 'storageclass.storage.k8s.io "nowhere" not found' in no_class["message"]
        assert "spec.storage.runs.storageClassName" in no_class["message"], no_class

        # Deleted: no worker could ever close their workflows, so they are terminated at
        # once rather than waited for.
        ids = [
            kube_json(cluster, ns, RESOURCE, n)["status"]["workflowId"]
            for n in ("no-image", "no-claim", "no-class")
        ]
        cluster.kubectl(
            "delete", RESOURCE, "no-image", "no-claim", "no-class", "-n", ns, "--wait=false"
        )

        async def gone() -> bool:
            return not kube_json(cluster, ns, RESOURCE)["items"]

        await eventually(gone, within=90, what="the experiments deleted")
        for workflow_id in ids:
            described = await temporal.client.get_workflow_handle(workflow_id).describe()
            assert described.status == WorkflowExecutionStatus.TERMINATED, workflow_id
    finally:
        stack.stop_all()


async def test_a_secret_the_worker_pods_mount_missing_is_said_on_the_experiment(
    crds: None,
    cluster: ClusterHandle,
    temporal: TemporalHandle,
    pod_namespace: str,
    worker_image: str,
    tmp_path: Path,
) -> None:
    """The Temporal credentials Secret (`workers.temporalSecretName`) absent from the
    experiment's namespace: the pod waits in ContainerCreating, and only the kubelet's events
    say why; the experiment says it too."""
    ns = pod_namespace
    secret = ("--worker-temporal-secret", "missing-creds")
    stack = fast_resync_operator(ns, cluster, temporal, tmp_path, worker_image, *secret)
    try:
        apply(cluster, ns, claim_manifest(DATA_CLAIM))
        apply(cluster, ns, pod_experiment("no-secret", epochs=1))

        condition = await eventually(
            lambda: workers_not_ready(cluster, ns, "no-secret", "VolumeNotMounted"),
            within=150,
            what="no-secret's WorkersReady: VolumeNotMounted",
        )
        assert 'secret "missing-creds" not found' in condition["message"], condition
        cluster.kubectl("delete", RESOURCE, "no-secret", "-n", ns, "--timeout=90s")
    finally:
        stack.stop_all()


def fast_resync_operator(
    namespace: str,
    cluster: ClusterHandle,
    temporal: TemporalHandle,
    root: Path,
    worker_image: str,
    *args: str,
) -> Stack:
    """The operator on a 4 s resync (it is what reads the pods and claims), started."""
    stack = Stack.fresh(
        namespace, cluster, temporal.address, root, worker_image=worker_image,
        operator_args=("--resync-seconds", "4", *args),
    )  # fmt: skip
    stack.start_operator()
    return stack


async def workers_not_ready(
    cluster: ClusterHandle, namespace: str, name: str, reason: str, words: str = ""
) -> dict[str, Any] | None:
    """WorkersReady once False for `reason` (with `words` in its message). A pod may first
    wait for room (Unschedulable: insufficient cpu) while the pods of the test before
    terminate on the real node: that is said too, and is not the answer looked for."""
    condition = await condition_false(cluster, namespace, name, "WorkersReady")
    if condition and condition["reason"] == reason and words in condition["message"]:
        return condition
    return None


async def condition_false(
    cluster: ClusterHandle, namespace: str, name: str, type_: str
) -> dict[str, Any] | None:
    """The experiment's condition of that type once it says False."""
    status = kube_json(cluster, namespace, RESOURCE, name).get("status") or {}
    condition = conditions_by_type(status).get(type_)
    return condition if condition and condition["status"] == "False" else None


def claim_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
