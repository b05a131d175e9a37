"""A real Kueue admits TempoTrain experiments (the operator as its job integration): each
labelled experiment gets a Workload, waits `Queued` with Kueue's words until admitted, runs
where its flavor says, is preempted by a higher priority (it saves a checkpoint and stops,
and its quota is given back once its pods are gone), resumes from that checkpoint when
admitted again, recomputing nothing, and finishes its Workload. On the kwok GPU nodes with a
GPU quota and a host worker, and in real pods on the real node with a CPU quota."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.cluster import NODE_POOL_LABEL
from tempotrain_dev.provisioner import claim_directory
from tempotrain_operator.queueing import PODSET_LABEL, QUEUE_LABEL, WORKLOAD_FINALIZER
from tempotrain_workers.checkpoints import latest_verified
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    experiment_status,
    kube_json,
)
from tests.e2e.test_real_pods import (
    data_volume,
    latest_attempt,
    pod_experiment,
    reached_step,
    snapshot_hash,
)
from tests.e2e.test_suspend import columns
from tests.support import eventually

pytestmark = pytest.mark.kube

RESOURCE = "bertexperiments.tempotrain.dev"
KUEUE = "kueue.x-k8s.io/v1beta2"


def queue_objects(
    name: str, namespace: str, quota: dict[str, str], node_labels: dict[str, str]
) -> list[dict[str, Any]]:
    """A flavor, a ClusterQueue of `quota` over it that preempts lower priorities, a
    LocalQueue `name` in the namespace, and two WorkloadPriorityClasses."""
    return [
        {
            "apiVersion": KUEUE,
            "kind": "ResourceFlavor",
            "metadata": {"name": name},
            "spec": {"nodeLabels": node_labels} if node_labels else {},
        },
        {
            "apiVersion": KUEUE,
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "queueingStrategy": "BestEffortFIFO",
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": list(quota),
                        "flavors": [
                            {
                                "name": name,
                                "resources": [
                                    {"name": r, "nominalQuota": q} for r, q in quota.items()
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": KUEUE,
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": name},
        },
        {
            "apiVersion": KUEUE,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": f"{name}-low"},
            "value": 100,
        },
        {
            "apiVersion": KUEUE,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": f"{name}-high"},
            "value": 1000,
        },
    ]


@pytest.fixture
def kueue_queue(
    cluster: ClusterHandle, request: pytest.FixtureRequest
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A name for this test's cluster-scoped Kueue objects (`create_queue`), and the list
    of those made, deleted afterwards."""
    made: list[dict[str, Any]] = []
    name = f"q-{uuid.uuid4().hex[:6]}"
    yield name, made
    for obj in reversed(made):
        cluster.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-", input=json.dumps(obj)
        )


def create_queue(
    cluster: ClusterHandle,
    kueue_queue: tuple[str, list[dict[str, Any]]],
    namespace: str,
    quota: dict[str, str],
    node_labels: dict[str, str] | None = None,
) -> str:
    name, made = kueue_queue
    objects = queue_objects(name, namespace, quota, node_labels or {})
    made += objects
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))
    return name


def queued(manifest: dict[str, Any], queue: str, priority: str | None = None) -> dict[str, Any]:
    labels = manifest["metadata"].setdefault("labels", {})
    labels[QUEUE_LABEL] = queue
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    return manifest


def workload_of(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any] | None:
    uid = kube_json(cluster, ns, RESOURCE, name)["metadata"]["uid"]
    found = kube_json(cluster, ns, "workloads.kueue.x-k8s.io")["items"]
    mine = [w for w in found if w["metadata"]["labels"].get("kueue.x-k8s.io/job-uid") == uid]
    return mine[0] if mine else None


async def phase_is(cluster: ClusterHandle, ns: str, name: str, *phases: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, name)
        return status if status.get("phase") in phases else None

    return await eventually(reached, within=300, what=f"{name} {'/'.join(phases)}")


async def said(cluster: ClusterHandle, ns: str, name: str, words: str) -> dict[str, Any]:
    """Kueue's words in the experiment's message (the operator follows them as they change)."""

    async def saying() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, name)
        return status if words in str(status.get("message")) else None

    return await eventually(saying, within=60, what=f"{name}'s message to say {words!r}")


async def test_kueue_queues_places_and_finishes_experiments_on_kwok_gpu_nodes(
    cluster: ClusterHandle,
    crds: None,
    temporal_address: str,
    namespace: str,
    tmp_path: Path,
    minilm_path: Path,
    tiny_bert: Path,
    kueue_queue: tuple[str, list[dict[str, Any]]],
) -> None:

    stack = Stack.fresh(namespace, cluster, temporal_address, tmp_path, operator_args=("--kueue",))
    write_sentiment_jsonl(stack.snapshots / "datasets" / "sentiment.jsonl", 200)
    stack.start_operator()
    stack.start_worker()
    try:
        # Room for one 1-GPU experiment; its flavor puts pods on the GPU pool.
        quota = {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "1"}
        queue = create_queue(cluster, kueue_queue, namespace, quota, {NODE_POOL_LABEL: "gpu"})
        # The first trains long enough (MiniLM, 96 steps) to be seen running, and preempted.
        first = experiment("first", stack.model(minilm_path))
        first["spec"]["training"]["epochs"] = 8
        apply(cluster, namespace, queued(first, queue, f"{queue}-low"))
        tiny = stack.model(tiny_bert)
        apply(cluster, namespace, queued(experiment("lost", tiny), "no-such-queue"))

        # A queue that does not exist: Queued, in Kueue's words; nothing is created.
        await phase_is(cluster, namespace, "lost", "Queued")
        await said(cluster, namespace, "lost", "LocalQueue no-such-queue doesn't exist")

        # One admitted; the next (applied once it is: Kueue orders equal priorities by
        # creation time, to the second) waits, Queued, with Kueue's reason.
        await phase_is(cluster, namespace, "first", "Training")
        apply(cluster, namespace, queued(experiment("second", tiny), queue, f"{queue}-low"))
        await phase_is(cluster, namespace, "second", "Queued")
        second = await said(cluster, namespace, "second", "insufficient unused quota")
        held = conditions_by_type(second)["Suspended"]
        assert (held["status"], held["reason"]) == ("True", "Queued")
        assert not [
            d for d in kube_json(cluster, namespace, "deployments")["items"]
            if d["metadata"]["name"].startswith(("second-", "lost-"))
        ]  # fmt: skip
        workload = workload_of(cluster, namespace, "first")
        assert workload is not None and workload["spec"]["queueName"] == queue
        assert {s["name"] for s in workload["spec"]["podSets"]} == {"training", "eval"}
        assert workload["metadata"]["ownerReferences"][0]["name"] == "first"

        # The admitted one's pods go where the flavor says.
        async def placed() -> dict[str, Any] | None:
            pods = kube_json(cluster, namespace, "pods")["items"]
            training = [p for p in pods if p["metadata"]["labels"].get(PODSET_LABEL) == "training"]
            return training[0] if training else None

        pod = await eventually(placed, within=60, what="first's training pod")
        assert pod["spec"]["nodeSelector"][NODE_POOL_LABEL] == "gpu", pod["spec"]
        assert pod["metadata"]["labels"]["tempotrain.dev/experiment"] == "first"

        # A higher priority preempts it: it saves where it is, stops, gives its GPU back.
        run_dir = stack.runs / "first"

        async def checkpointed() -> bool:
            return bool(experiment_status(cluster, namespace, "first").get("latestCheckpoint"))

        await eventually(checkpointed, within=120, what="first's first checkpoint")
        urgent = queued(experiment("urgent", tiny), queue, f"{queue}-high")
        apply(cluster, namespace, urgent)
        preempted = await phase_is(cluster, namespace, "first", "Queued")
        assert conditions_by_type(preempted)["Suspended"]["reason"] == "Preempted", preempted
        stopped_at, attempts = reached_step(run_dir), preempted["attempts"]
        assert (await phase_is(cluster, namespace, "urgent", "Succeeded", "Failed"))[
            "phase"
        ] == "Succeeded", stack.log("worker")

        # Admitted again (after `second`, which waited longer), it resumes where it stopped,
        # and finishes: its Workload says so and lets go.
        assert (await phase_is(cluster, namespace, "first", "Succeeded", "Failed"))[
            "phase"
        ] == "Succeeded", stack.log("worker")
        attempt, resumed_from = latest_attempt(run_dir)
        assert attempt == attempts + 1 and resumed_from == stopped_at, (attempt, resumed_from)

        async def finished() -> dict[str, Any] | None:
            found = workload_of(cluster, namespace, "first")
            if found is None:
                return None
            done = conditions_by_type(found.get("status") or {}).get("Finished") or {}
            ours = WORKLOAD_FINALIZER in (found["metadata"].get("finalizers") or [])
            return found if done.get("status") == "True" and not ours else None

        finished_workload = await eventually(finished, within=60, what="first's Workload Finished")
        assert conditions_by_type(finished_workload["status"])["Finished"]["reason"] == "Succeeded"
        done = await phase_is(cluster, namespace, "second", "Succeeded", "Failed")
        assert done["phase"] == "Succeeded", stack.log("worker")
        resumed = conditions_by_type(done)["Suspended"]
        assert resumed["status"] == "False" and "admitted by Kueue" in resumed["message"]

        # Deleted while queued: its Workload goes with it (our finalizer does not hold it).
        cluster.kubectl("delete", RESOURCE, "lost", "-n", namespace, "--wait=true")

        async def lost_workload_gone() -> bool:
            return not [
                w for w in kube_json(cluster, namespace, "workloads.kueue.x-k8s.io")["items"]
                if w["spec"]["queueName"] == "no-such-queue"
            ]  # fmt: skip

        await eventually(lost_workload_gone, within=60, what="lost's Workload to be deleted")
    finally:
        stack.stop_all()


async def test_a_preempted_experiment_checkpoints_waits_and_resumes_recomputing_nothing(
    cluster: ClusterHandle,
    crds: None,
    temporal_address: str,
    pod_namespace: str,
    worker_image: str,
    tmp_path: Path,
    minilm_path: Path,
    kueue_queue: tuple[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real pods, a CPU quota with room for one experiment: a second one waits Queued; a
    higher-priority one preempts the first, which saves and stops (its pods gone) before its
    quota is given back; the first resumes from that checkpoint once the other has finished,
    and over its whole life recomputes 0 steps."""
    ns = pod_namespace
    stack = Stack.fresh(
        ns, cluster, temporal_address, tmp_path, worker_image=worker_image, ray_address=None,
        operator_args=("--kueue",),
    )  # fmt: skip
    stack.start_operator()
    try:
        data = await data_volume(cluster, ns, minilm_path)
        # Training 500m + eval 1 CPU each: two experiments never fit in 2 CPUs.
        queue = create_queue(cluster, kueue_queue, ns, {"cpu": "2", "memory": "8Gi"})
        # Long enough to be preempted mid-run (checkpoints in the background made 4 epochs
        # a 20-second run here).
        apply(cluster, ns, queued(pod_experiment("first", epochs=10), queue, f"{queue}-low"))
        run_dir = claim_directory(cluster.kubectl, ns, "first-runs") / "first"

        async def training_with_checkpoint() -> bool:
            status = experiment_status(cluster, ns, "first")
            return status.get("phase") == "Training" and bool(status.get("latestCheckpoint"))

        await eventually(training_with_checkpoint, within=300, what="first training")
        apply(cluster, ns, queued(pod_experiment("second", epochs=1), queue, f"{queue}-low"))
        await phase_is(cluster, ns, "second", "Queued")
        await said(cluster, ns, "second", "insufficient unused quota")
        shown = columns(cluster, ns, "bexp", "second")
        assert shown["PHASE"] == "Queued", shown
        # Deleted while it waits: nothing of it was created, and its Workload goes.
        cluster.kubectl("delete", RESOURCE, "second", "-n", ns, "--wait=true")

        preempted_at = time.monotonic()
        apply(cluster, ns, queued(pod_experiment("urgent", epochs=1), queue, f"{queue}-high"))
        status = await phase_is(cluster, ns, "first", "Queued")
        held = conditions_by_type(status)["Suspended"]
        assert (held["status"], held["reason"]) == ("True", "Preempted"), held
        stopped_at = reached_step(run_dir)
        total_steps = json.loads((run_dir / "progress.json").read_text())["total_steps"]
        assert stopped_at < total_steps, "first ended before it was preempted"
        verified = latest_verified(run_dir, snapshot_hash(data))
        assert verified is not None and verified.step == stopped_at, (verified, stopped_at)

        async def urgent_admitted() -> bool:
            found = workload_of(cluster, ns, "urgent")
            admitted = conditions_by_type((found or {}).get("status") or {}).get("Admitted")
            return bool(admitted) and admitted["status"] == "True"

        await eventually(urgent_admitted, within=180, what="urgent admitted")
        readmitted_seconds = time.monotonic() - preempted_at
        # The quota was given back only once first's pods had stopped: gone, or terminating
        # with every container exited (a terminal phase; the kubelet removes the object a
        # moment later), never one still running its trainer.
        first_pods = {
            p["metadata"]["name"]: (p.get("status") or {}).get("phase")
            for p in kube_json(cluster, ns, "pods")["items"]
            if p["metadata"]["labels"].get("tempotrain.dev/experiment") == "first"
        }
        assert set(first_pods.values()) <= {"Succeeded", "Failed"}, first_pods
        attempts = status["attempts"]

        done = await phase_is(cluster, ns, "urgent", "Succeeded", "Failed")
        assert done["phase"] == "Succeeded", done

        async def resumed() -> tuple[int, int] | None:
            attempt = latest_attempt(run_dir)
            return attempt if attempt[0] > attempts and reached_step(run_dir) > attempt[1] else None

        _, resumed_from = await eventually(resumed, within=300, what="first to resume")
        assert stopped_at - resumed_from == 0, "steps recomputed after the preemption"
        done = await phase_is(cluster, ns, "first", "Succeeded", "Failed")
        assert done["phase"] == "Succeeded", done
        # Over its whole life: every attempt resumed from where the one before it stopped.
        assert done["attempts"] == attempts + 1, done["attempts"]
        with capsys.disabled():
            print(
                f"\n[queueing] preempted at step {stopped_at}, resumed from {resumed_from} "
                f"(0 recomputed); quota admitted elsewhere {readmitted_seconds:.1f} s after "
                "the preempting experiment was applied"
            )
    finally:
        stack.stop_all()
