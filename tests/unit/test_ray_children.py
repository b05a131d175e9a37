"""Pure builders of a Cifar10Scaling's children (the RayCluster, the Ray driver worker), its
workflow input and its status mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_pvc,
    build_worker_deployment,
    worker_deployment_names,
)
from tempotrain_operator.cifar10_scaling import semantic_errors
from tempotrain_operator.mapping import scaling_input, status_patch
from tempotrain_operator.ray_children import (
    build_ray_cluster,
    is_ready,
    jobs_address,
    largest_scale,
    ray_cluster_name,
)
from tempotrain_workers.api import (
    Cifar10ScalingSpec,
    CifarDataset,
    CifarModel,
    Phase,
    RayScaleConfig,
    ScaleOutcome,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.temporal_client import TemporalConnection

DEFAULT_IMAGE = "operator-default:1"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WORKERS = WorkerConfig(
    image="img:1",
    temporal=TemporalConnection("t:7233"),
    training_queue="tq",
    eval_queue="eq",
    ray_queue="ray-q-uid",
)
SCALES = [
    {"workers": 1, "cpusPerWorker": 4},
    {"workers": 4, "cpusPerWorker": 2},
    {"workers": 2, "cpusPerWorker": 3},
]


def _experiment(**spec: Any) -> Experiment[Cifar10ScalingSpec]:
    model = Cifar10ScalingSpec.model_validate({"scales": SCALES, **spec})
    return Experiment(name="c10", namespace="ns", uid="0123456789abcdef", spec=model)


def _groups(cluster: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = cluster["spec"]
    assert len(spec["workerGroupSpecs"]) == 1
    return spec["headGroupSpec"], spec["workerGroupSpecs"][0]


def _container(group: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# -- the RayCluster -----------------------------------------------------------------------------
def test_one_worker_pod_per_rank_of_the_largest_scale_and_the_most_cpus_any_scale_asks() -> None:
    experiment = _experiment()
    assert largest_scale(experiment.spec) == (4, 4, 0)
    cluster = build_ray_cluster(experiment, DEFAULT_IMAGE)
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"] == "c10-ray" == ray_cluster_name("c10")
    assert cluster["metadata"]["namespace"] == "ns"
    _, workers = _groups(cluster)
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (4, 4, 4)
    resources = _container(workers)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert resources["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert workers["rayStartParams"] == {"num-cpus": "4"}


def test_a_smaller_worker_pod_cpu_packs_pods_while_ray_still_counts_the_scales_cpus() -> None:
    _, workers = _groups(build_ray_cluster(_experiment(ray={"worker": {"cpu": "500m"}}), "i"))
    resources = _container(workers)["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "500m"
    assert workers["rayStartParams"] == {"num-cpus": "4"}


def test_a_cpu_only_cluster_asks_for_no_gpus_and_tolerates_no_gpu_taint() -> None:
    cluster = build_ray_cluster(_experiment(), DEFAULT_IMAGE)
    head, workers = _groups(cluster)
    for group in (head, workers):
        pod = group["template"]["spec"]
        assert "tolerations" not in pod
        assert "nvidia.com/gpu" not in str(pod)
    assert "num-gpus" not in workers["rayStartParams"]


def test_gpu_scales_give_each_worker_pod_the_most_gpus_any_scale_asks_and_the_gpu_toleration() -> (
    None
):
    experiment = _experiment(
        useGpu=True,
        scales=[
            {"workers": 1, "gpusPerWorker": 1},
            {"workers": 2, "gpusPerWorker": 2},
            {"workers": 3},
        ],
        ray={
            "worker": {
                "memory": "24Gi",
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
            }
        },
    )
    assert largest_scale(experiment.spec) == (3, 1, 2)
    head, workers = _groups(build_ray_cluster(experiment, DEFAULT_IMAGE))
    resources = _container(workers)["resources"]
    assert resources["limits"] == {"cpu": "1", "memory": "24Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == {"cpu": "1", "memory": "24Gi"}
    assert workers["rayStartParams"] == {"num-cpus": "1", "num-gpus": "2"}
    pod = workers["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        GPU_TOLERATION,
    ]
    assert pod["nodeSelector"] == {"pool": "a100"}
    # The head trains nothing: no GPU, no GPU node.
    head_pod = head["template"]["spec"]
    assert "nvidia.com/gpu" not in str(head_pod)
    assert "tolerations" not in head_pod and "nodeSelector" not in head_pod


def test_use_gpu_without_gpus_per_worker_gives_each_worker_one_gpu() -> None:
    """Ray Train places a `use_gpu` worker on one GPU by default: pods without one would leave
    its workers unplaceable."""
    _, workers = _groups(build_ray_cluster(_experiment(useGpu=True), DEFAULT_IMAGE))
    assert _container(workers)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["rayStartParams"]["num-gpus"] == "1"
    assert GPU_TOLERATION in workers["template"]["spec"]["tolerations"]
    assert RayScaleConfig(workers=2).gpus(use_gpu=True) == 1
    assert RayScaleConfig(workers=2, gpus_per_worker=2).gpus(use_gpu=True) == 2
    assert RayScaleConfig(workers=2).gpus(use_gpu=False) == 0


def test_the_head_runs_no_training_and_serves_the_jobs_api() -> None:
    head, _ = _groups(
        build_ray_cluster(_experiment(ray={"head": {"cpu": "3", "memory": "6Gi"}}), DEFAULT_IMAGE)
    )
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    container = _container(head)
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "6Gi"}
    assert container["resources"]["limits"] == {"cpu": "3", "memory": "6Gi"}
    assert {"containerPort": 8265, "name": "dashboard"} in container["ports"]


@pytest.mark.parametrize(
    "storage",
    [{}, {"snapshots": {"existingClaim": "shared-data"}}],
    ids=["own-claims", "existing-claim"],
)
def test_head_and_workers_mount_the_experiment_volumes_where_the_activity_reads_them(
    storage: dict[str, Any],
) -> None:
    head, workers = _groups(build_ray_cluster(_experiment(storage=storage), DEFAULT_IMAGE))
    snapshots_claim = "shared-data" if storage else "c10-snapshots"
    for group in (head, workers):
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"snapshots": snapshots_claim, "runs": "c10-runs"}
        mounts = {m["name"]: m["mountPath"] for m in _container(group)["volumeMounts"]}
        assert mounts["snapshots"] == "/data/snapshots"
        assert mounts["runs"] == "/data/runs"
        # Every mount is backed by a volume of the pod.
        assert set(mounts) <= {v["name"] for v in pod["volumes"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == 1000


@pytest.mark.parametrize(
    ("workers_image", "ray", "image"),
    [
        (None, {}, DEFAULT_IMAGE),
        ("workers:2", {}, "workers:2"),
        ("workers:2", {"image": "ray:3"}, "ray:3"),
        (None, {"image": "ray:3"}, "ray:3"),
    ],
    ids=["operator-default", "workers-image", "ray-image-first", "ray-image-only"],
)
def test_image_is_the_ray_image_else_the_workers_image_else_the_operators(
    workers_image: str | None, ray: dict[str, Any], image: str
) -> None:
    workers_spec = {"imagePullPolicy": "Always"} | (
        {"image": workers_image} if workers_image else {}
    )
    experiment = _experiment(workers=workers_spec, ray=ray)
    head, workers = _groups(build_ray_cluster(experiment, DEFAULT_IMAGE))
    for group in (head, workers):
        assert _container(group)["image"] == image
        assert _container(group)["imagePullPolicy"] == "Always"


def test_cluster_and_pods_are_labelled_as_the_experiments() -> None:
    cluster = build_ray_cluster(_experiment(), DEFAULT_IMAGE)
    head, workers = _groups(cluster)
    for labels, component in (
        (cluster["metadata"]["labels"], "ray-cluster"),
        (head["template"]["metadata"]["labels"], "ray-head"),
        (workers["template"]["metadata"]["labels"], "ray-worker"),
    ):
        assert labels == {
            "app.kubernetes.io/name": "tempotrain",
            "app.kubernetes.io/instance": "c10",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "tempotrain-operator",
            "tempotrain.dev/experiment": "c10",
        }


def test_jobs_address_is_the_head_service_kuberay_creates() -> None:
    assert jobs_address("c10", "ns") == "http://c10-ray-head-svc.ns.svc:8265"


@pytest.mark.parametrize(
    ("cluster", "ready"),
    [
        ({}, False),
        ({"status": None}, False),
        ({"status": {}}, False),
        ({"status": {"state": "unhealthy"}}, False),
        ({"status": {"state": "Ready"}}, False),
        ({"status": {"state": "ready"}}, True),
    ],
)
def test_is_ready_only_on_kuberays_ready_state(cluster: dict[str, Any], ready: bool) -> None:
    assert is_ready(cluster) is ready


# -- the Ray driver worker ----------------------------------------------------------------------
def test_a_scaling_experiment_has_one_worker_deployment_the_ray_driver() -> None:
    assert worker_deployment_names("c10", "Cifar10Scaling") == ["c10-ray-driver"]
    assert worker_deployment_names("b") == ["b-training", "b-eval"]


def test_ray_driver_worker_polls_the_ray_queue_on_cpu() -> None:
    deployment = build_worker_deployment(_experiment(), WORKERS, "ray-driver")
    assert deployment["metadata"]["name"] == "c10-ray-driver"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "ray-driver-worker"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][-2:] == ["--queue", "ray-q-uid"]
    assert container["image"] == "img:1"
    # It only submits and supervises; the training runs on the Ray pods.
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"}}
    assert "tolerations" not in pod
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data/snapshots", "/data/runs"}


# -- spec → workflow input ----------------------------------------------------------------------
def test_scaling_input_carries_the_spec_and_a_cifar10scaling_status_target() -> None:
    experiment = _experiment(
        useGpu=True,
        scales=[{"workers": 1, "gpusPerWorker": 1, "epochs": 10, "batchSize": 256}],
        dataset={"name": "synthetic", "size": 512},
        model="resnet18",
        randomSeed=3,
        learningRate=0.2,
        maxFailures=4,
    )
    request = scaling_input("c10", "ns", "uid-1", experiment.spec, "http://ray:8265", "opq")
    assert request.run_id == "c10"
    assert request.experiment_name == "c10"
    assert request.scales == [
        RayScaleConfig(workers=1, gpus_per_worker=1, epochs=10, batch_size=256)
    ]
    assert (request.dataset, request.synthetic_size, request.model) == (
        CifarDataset.SYNTHETIC,
        512,
        CifarModel.RESNET18,
    )
    assert request.use_gpu is True
    assert (request.random_seed, request.learning_rate, request.max_failures) == (3, 0.2, 4)
    assert request.ray_address == "http://ray:8265"
    assert request.status_target == StatusTarget(
        kind="Cifar10Scaling", namespace="ns", name="c10", uid="uid-1", queue="opq"
    )


def test_scaling_input_defaults_the_synthetic_size_and_keeps_an_experiment_name() -> None:
    spec = _experiment(experimentName="cifar scaling, take 2").spec
    request = scaling_input("c10", "ns", "uid-1", spec, "local", "opq")
    assert request.experiment_name == "cifar scaling, take 2"
    assert request.run_id == "c10"  # the run directory follows the resource, not the title
    assert request.dataset == CifarDataset.CIFAR10
    assert request.synthetic_size == 2048
    assert request.model == CifarModel.SIMPLE_CNN and request.use_gpu is False
    assert [s.workers for s in request.scales] == [1, 4, 2]
    assert [s.cpus_per_worker for s in request.scales] == [4, 2, 3]


# -- workflow status → /status ------------------------------------------------------------------
def _update(**fields: Any) -> StatusUpdate:
    target = StatusTarget(kind="Cifar10Scaling", namespace="ns", name="c10")
    return StatusUpdate(target=target, at=datetime(2026, 1, 1, tzinfo=UTC), **fields)


def _outcome(workers: int, accuracy: float, speedup: float) -> ScaleOutcome:
    return ScaleOutcome(
        workers=workers,
        test_accuracy=accuracy,
        training_seconds=60.0 / workers,
        images_per_second=100.0 * speedup,
        speedup=speedup,
        efficiency=round(speedup / workers, 4),
        num_parameters=1234,
        checkpoint_path=f"/data/runs/c10/scale-{workers}w" if workers > 1 else None,
    )


def test_a_running_scale_shows_as_current_and_done_counts_the_known_results() -> None:
    patch = status_patch(
        _update(phase=Phase.TRAINING, current_scale=2, total_scales=3),
        {"phase": "Pending", "results": [{"workers": 1}]},
    )
    assert patch == {"phase": "Training", "currentScale": 2, "done": "1/3"}
    assert status_patch(_update(total_scales=3), {"phase": "Pending"}) == {"done": "0/3"}


def test_scale_results_become_camel_case_rows_with_the_best_accuracy_and_speedup() -> None:
    outcomes = [_outcome(1, 0.61234, 1.0), _outcome(2, 0.65678, 1.87654), _outcome(4, 0.6, 3.2)]
    patch = status_patch(
        _update(scale_results=outcomes, total_scales=3),
        {"phase": "Training", "results": [{"workers": 1}]},
    )
    assert patch["done"] == "3/3"
    assert patch["results"][0] == {
        "workers": 1,
        "testAccuracy": 0.61234,
        "trainingSeconds": 60.0,
        "imagesPerSecond": 100.0,
        "speedup": 1.0,
        "efficiency": 1.0,
        "numParameters": 1234,
        "restarts": 0,
    }
    assert patch["results"][1]["checkpointPath"] == "/data/runs/c10/scale-2w"
    assert [r["workers"] for r in patch["results"]] == [1, 2, 4]
    assert patch["bestAccuracy"] == 0.6568  # the best accuracy of any scale, not the last one's
    assert patch["bestSpeedup"] == 3.2
    assert "phase" not in patch and "currentScale" not in patch


def test_the_last_update_ends_the_experiment() -> None:
    outcomes = [_outcome(1, 0.6, 1.0), _outcome(2, 0.62, 1.9)]
    patch = status_patch(
        _update(phase=Phase.SUCCEEDED, scale_results=outcomes, total_scales=2),
        {"phase": "Training", "currentScale": 2, "results": [{"workers": 1}]},
    )
    assert patch["phase"] == "Succeeded"
    assert patch["completionTime"] == "2026-01-01T00:00:00Z"
    assert patch["done"] == "2/2"
    assert (patch["bestAccuracy"], patch["bestSpeedup"]) == (0.62, 1.9)


def test_results_never_shrink() -> None:
    current = {"phase": "Training", "results": [{"workers": 1}, {"workers": 2}]}
    stale = status_patch(_update(scale_results=[_outcome(1, 0.6, 1.0)]), current)
    assert "results" not in stale
    assert "bestAccuracy" not in stale and "bestSpeedup" not in stale
    same = status_patch(
        _update(scale_results=[_outcome(1, 0.6, 1.0), _outcome(2, 0.7, 2.0)]), current
    )
    assert [r["workers"] for r in same["results"]] == [1, 2]


def test_a_stale_update_moves_done_back_no_more_than_results() -> None:
    current = {"phase": "Training", "done": "2/3", "results": [{"workers": 1}, {"workers": 2}]}
    stale = status_patch(_update(scale_results=[_outcome(1, 0.6, 1.0)], total_scales=3), current)
    assert "results" not in stale
    assert stale.get("done", "2/3") == "2/3"


def test_semantic_errors_refuse_gpus_without_use_gpu() -> None:
    gpu_scales = [{"workers": 1}, {"workers": 2, "gpusPerWorker": 1}]
    assert semantic_errors(_experiment(scales=gpu_scales).spec) == [
        "a scale sets gpusPerWorker > 0 but useGpu is false"
    ]
    assert semantic_errors(_experiment(scales=gpu_scales, useGpu=True).spec) == []
    assert semantic_errors(_experiment().spec) == []


def test_semantic_errors_refuse_deleting_a_claim_that_is_not_ours() -> None:
    spec = _experiment(
        storage={"runs": {"existingClaim": "shared-runs", "reclaimPolicy": "Delete"}}
    ).spec
    (error,) = semantic_errors(spec)
    assert error.startswith("storage.runs: reclaimPolicy Delete") and "shared-runs" in error


def test_ray_pods_get_a_memory_backed_dev_shm_for_the_object_store() -> None:
    head, workers = _groups(build_ray_cluster(_experiment(), DEFAULT_IMAGE))
    for group in (head, workers):
        pod = group["template"]["spec"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in _container(group)["volumeMounts"]


def test_ray_pods_on_several_nodes_share_read_write_many_claims() -> None:
    pvc = build_pvc(_experiment(), "runs")
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    own = build_pvc(_experiment(storage={"runs": {"accessMode": "ReadWriteOnce"}}), "runs")
    assert own is not None and own["spec"]["accessModes"] == ["ReadWriteOnce"]
