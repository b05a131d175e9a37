"""The operator's side of Kueue, as pure functions: the Workload it builds, what a Workload's
conditions mean for the experiment, the release of an evicted one's quota, and where an
admitted one's pods go."""

from __future__ import annotations

from typing import Any

import pytest
from tempotrain_operator.children import (
    TEMPLATE_HASH,
    Experiment,
    WorkerConfig,
    build_worker_deployment,
    template_hash,
)
from tempotrain_operator.queueing import (
    JOB_UID_LABEL,
    PODSET_LABEL,
    QUEUE_LABEL,
    WORKLOAD_FINALIZER,
    Placement,
    PlacementConflict,
    admission_of,
    build_workload,
    finish_patch,
    place,
    placements,
    pod_sets,
    queued_hold,
    release_patch,
    workload_name,
)
from tempotrain_operator.ray_children import build_ray_cluster
from tempotrain_workers.api import BertExperimentSpec, Cifar10ScalingSpec, Phase
from tempotrain_workers.temporal_client import TemporalConnection

WORKERS = WorkerConfig(
    image="img:1", temporal=TemporalConnection("t:7233"), training_queue="tq", eval_queue="eq"
)
UID = "6d1f3c0e-8a53-4a4e-9d0b-3b2f0f8a1c11"


def _bert(**resources: object) -> list[dict[str, Any]]:
    spec = BertExperimentSpec.model_validate({"model": {"name": "m"}, "resources": resources})
    experiment = Experiment(name="exp", namespace="ns", uid=UID, spec=spec)
    return [build_worker_deployment(experiment, WORKERS, role) for role in ("training", "eval")]


def _workload(
    *conditions: dict[str, str], admission: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "ns", "resourceVersion": "7", "generation": 1},
        "spec": {"queueName": "team-a"},
        "status": {"conditions": list(conditions), "admission": admission},
    }


def _condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_the_workload_name_is_kueues_shape_and_stable_per_object() -> None:
    name = workload_name("BertExperiment", "exp", UID)
    assert name.startswith("bertexperiment-exp-") and len(name) == len("bertexperiment-exp-") + 5
    assert workload_name("BertExperiment", "exp", UID) == name
    assert workload_name("BertExperiment", "exp", UID.replace("6", "7")) != name
    assert len(workload_name("BertExperiment", "x" * 300, UID)) == 247 + 6


def test_the_workload_counts_each_worker_role_with_its_requests_and_is_owned() -> None:
    body = {
        "kind": "BertExperiment",
        "metadata": {"name": "exp", "namespace": "ns", "uid": UID, "labels": {QUEUE_LABEL: "q"}},
    }
    workload = build_workload(body, pod_sets(_bert(cpu="3", gpus=1), "exp"), ("high", 1000))
    sets = {s["name"]: s for s in workload["spec"]["podSets"]}
    assert set(sets) == {"training", "eval"}
    training = sets["training"]["template"]["spec"]["containers"][0]["resources"]
    assert training["requests"]["cpu"] == "3" and training["limits"] == {"nvidia.com/gpu": "1"}
    assert workload["spec"]["queueName"] == "q"
    assert workload["spec"]["priority"] == 1000
    assert workload["spec"]["priorityClassRef"]["name"] == "high"
    meta = workload["metadata"]
    assert meta["labels"] == {JOB_UID_LABEL: UID}
    assert meta["finalizers"] == [WORKLOAD_FINALIZER]
    (owner,) = meta["ownerReferences"]
    assert owner["controller"] is True and owner["uid"] == UID


def test_a_ray_cluster_is_one_pod_set_for_its_head_and_one_per_worker_group() -> None:
    spec = Cifar10ScalingSpec.model_validate(
        {"scales": [{"workers": 3, "cpusPerWorker": 2}, {"workers": 1, "cpusPerWorker": 1}]}
    )
    cluster = build_ray_cluster(Experiment(name="c", namespace="ns", uid=UID, spec=spec), "img")
    sets = {s["name"]: s["count"] for s in pod_sets([cluster], "c")}
    assert sets == {"head": 1, "workers": 3}


def test_pending_admitted_and_evicted_read_as_kueue_means_them() -> None:
    missing = _condition("QuotaReserved", "False", "Inadmissible", "LocalQueue q doesn't exist")
    pending = admission_of(_workload(missing))
    assert pending.holds and not pending.admitted
    assert pending.message == "LocalQueue q doesn't exist"
    assert "LocalQueue q doesn't exist" in queued_hold(pending).message("not running")
    assert queued_hold(pending).phase == Phase.QUEUED

    assignment = {"name": "training", "flavors": {"cpu": "default"}, "count": 1}
    admitted = admission_of(
        _workload(
            _condition("QuotaReserved", "True", "QuotaReserved"),
            _condition("Admitted", "True", "Admitted"),
            admission={"clusterQueue": "cq", "podSetAssignments": [assignment]},
        )
    )
    assert not admitted.holds and admitted.cluster_queue == "cq"
    assert admitted.assignments == [assignment]

    preempted = admission_of(
        _workload(
            _condition("QuotaReserved", "True", "QuotaReserved"),
            _condition("Admitted", "True", "Admitted"),
            _condition("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
            admission={"clusterQueue": "cq", "podSetAssignments": [assignment]},
        )
    )
    assert preempted.holds and preempted.evicted and preempted.reserved
    assert queued_hold(preempted).stopped == "Preempted"
    assert admission_of(None).holds


def test_releasing_an_evicted_workload_clears_its_admission_as_kueue_does() -> None:
    workload = _workload(
        _condition("QuotaReserved", "True", "QuotaReserved"),
        _condition("Admitted", "True", "Admitted"),
        _condition("Evicted", "True", "Preempted", "to make room"),
        admission={"clusterQueue": "cq", "podSetAssignments": []},
    )
    patch = release_patch(workload)
    assert patch["metadata"]["resourceVersion"] == "7"  # refused if Kueue wrote meanwhile
    assert patch["status"]["admission"] is None
    by_type = {c["type"]: c for c in patch["status"]["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False"
    assert by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["Admitted"]["reason"] == "NoReservation"
    assert by_type["Requeued"]["status"] == "True"  # preempted: back in the queue at once
    assert by_type["Evicted"]["status"] == "True"  # Kueue's to flip at the next admission

    deactivated = _workload(_condition("Evicted", "True", "Deactivated", "spec.active false"))
    requeued = {c["type"]: c for c in release_patch(deactivated)["status"]["conditions"]}
    assert requeued["Requeued"]["status"] == "False"


def test_finishing_says_succeeded_or_failed() -> None:
    done = finish_patch(_workload(), Phase.SUCCEEDED.value, "done")
    (finished,) = done["status"]["conditions"]
    assert (finished["type"], finished["status"], finished["reason"]) == (
        "Finished",
        "True",
        "Succeeded",
    )
    cancelled = finish_patch(_workload(), Phase.CANCELLED.value, "deleted")
    assert cancelled["status"]["conditions"][0]["reason"] == "Failed"


def test_an_admitted_flavor_places_the_pods_and_the_template_hash_follows() -> None:
    flavors = {
        "a100": {
            "spec": {
                "nodeLabels": {"pool": "a100"},
                "tolerations": [{"key": "team", "operator": "Exists", "effect": "NoSchedule"}],
            }
        }
    }
    assignments = [{"name": "training", "flavors": {"cpu": "a100", "nvidia.com/gpu": "a100"}}]
    deployments = _bert(gpus=1)
    before = deployments[0]["metadata"]["annotations"][TEMPLATE_HASH]
    place(deployments, "exp", placements(assignments, flavors))
    training = deployments[0]["spec"]["template"]
    assert training["spec"]["nodeSelector"] == {"pool": "a100"}
    assert {"key": "team", "operator": "Exists", "effect": "NoSchedule"} in (
        training["spec"]["tolerations"]
    )
    assert training["metadata"]["labels"][PODSET_LABEL] == "training"
    after = deployments[0]["metadata"]["annotations"][TEMPLATE_HASH]
    assert after != before and after == template_hash(training)
    eval_pods = deployments[1]["spec"]["template"]
    assert "nodeSelector" not in eval_pods["spec"]  # no flavor with node labels for it
    assert eval_pods["metadata"]["labels"][PODSET_LABEL] == "eval"


def test_a_flavor_that_contradicts_the_pods_own_node_selector_is_a_conflict() -> None:
    deployments = _bert(nodeSelector={"pool": "h100"})
    with pytest.raises(PlacementConflict, match=r"pool=a100 contradicts .* pool=h100"):
        place(deployments, "exp", {"training": Placement({"pool": "a100"})})
