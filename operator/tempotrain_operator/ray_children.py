"""Pure builder of a Cifar10Scaling's KubeRay `RayCluster` (ray.io/v1).

One cluster per experiment, sized for its largest scale: one Ray worker pod per Ray Train
worker, each with that scale's CPUs and GPUs, so every scale fits without autoscaling. The
head runs no training (`num-cpus: 0`); it hosts the GCS, the dashboard and the Ray Jobs API
that the driver is submitted to. All pods mount the experiment's volumes at the same paths as
the worker pods, so checkpoints written by Ray workers are read back by the activity.
"""

from __future__ import annotations

import copy
from typing import Any

from tempotrain_workers.api import Cifar10ScalingSpec, PodSettings, effective_gpus

from tempotrain_operator.children import (
    GPU_RESOURCE,
    GPU_TOLERATION,
    RESTRICTED_CONTAINER,
    Experiment,
    apply_pod_settings,
    data_volumes,
    labels,
    pod_fields,
)

JOBS_PORT = 8265
READY_STATE = "ready"


def ray_cluster_name(name: str) -> str:
    return f"{name}-ray"


def jobs_address(name: str, namespace: str) -> str:
    """The head's Ray Jobs API, through the Service KubeRay creates (`<cluster>-head-svc`)."""
    # `<svc>.<ns>.svc`, not `...svc.cluster.local`: the cluster domain is a setting.
    return f"http://{ray_cluster_name(name)}-head-svc.{namespace}.svc:{JOBS_PORT}"


def largest_scale(spec: Cifar10ScalingSpec) -> tuple[int, int, int]:
    """(worker pods, CPUs per pod, GPUs per pod) that fit every scale."""
    return (
        max(s.workers for s in spec.scales),
        max(s.cpus_per_worker for s in spec.scales),
        max(effective_gpus(s.gpus_per_worker, spec.use_gpu) for s in spec.scales),
    )


def _pod_spec(
    experiment: Experiment[Cifar10ScalingSpec],
    container: dict[str, Any],
    settings: PodSettings,
    gpus: int,
) -> dict[str, Any]:
    volumes, mounts = data_volumes(experiment, shared_memory=True)
    # Restricted, but with a writable root filesystem: Ray writes beside its install (session
    # and log dirs, runtime environments) where /tmp alone does not cover it.
    container = {
        **container,
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
    }
    apply_pod_settings(container, settings, [], gpus=gpus)
    return {"containers": [container], "volumes": volumes, **pod_fields(settings)}


def build_ray_cluster(
    experiment: Experiment[Cifar10ScalingSpec],
    default_image: str,
    pod_defaults: PodSettings | None = None,
) -> dict[str, Any]:
    spec = experiment.spec
    settings = spec.workers.over(pod_defaults or PodSettings())
    ray = spec.ray
    image = ray.image or spec.workers.image or default_image
    pods, cpus, gpus = largest_scale(spec)
    head_resources = {"cpu": ray.head.cpu, "memory": ray.head.memory}
    head = _pod_spec(
        experiment,
        {
            "name": "ray-head",
            "image": image,
            "imagePullPolicy": spec.workers.image_pull_policy,
            "resources": {"requests": head_resources, "limits": head_resources},
            "ports": [
                {"containerPort": 6379, "name": "gcs-server"},
                {"containerPort": JOBS_PORT, "name": "dashboard"},
                {"containerPort": 10001, "name": "client"},
            ],
        },
        settings,
        gpus=0,
    )
    pod_cpu = ray.worker.cpu or str(cpus)
    worker_limits: dict[str, str] = {"cpu": pod_cpu, "memory": ray.worker.memory}
    tolerations = [t.wire() for t in ray.worker.tolerations]
    if gpus:
        worker_limits[GPU_RESOURCE] = str(gpus)
        # GPU nodes are tainted; KubeRay adds no toleration of its own.
        tolerations.append(dict(GPU_TOLERATION))
    worker = _pod_spec(
        experiment,
        {
            "name": "ray-worker",
            "image": image,
            "imagePullPolicy": spec.workers.image_pull_policy,
            "resources": {
                "requests": {"cpu": pod_cpu, "memory": ray.worker.memory},
                "limits": worker_limits,
            },
        },
        settings,
        gpus=gpus,
    )
    if tolerations:
        worker["tolerations"] = tolerations
    if ray.worker.node_selector:
        worker["nodeSelector"] = dict(ray.worker.node_selector)
    worker_start: dict[str, str] = {"num-cpus": str(cpus)}
    if gpus:
        worker_start["num-gpus"] = str(gpus)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": ray_cluster_name(experiment.name),
            "namespace": experiment.namespace,
            "labels": labels(experiment, "ray-cluster"),
        },
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": {
                    "metadata": {"labels": labels(experiment, "ray-head")},
                    "spec": head,
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": pods,
                    "minReplicas": pods,
                    "maxReplicas": pods,
                    "rayStartParams": worker_start,
                    "template": {
                        "metadata": {"labels": labels(experiment, "ray-worker")},
                        "spec": worker,
                    },
                }
            ],
        },
    }


def is_ready(ray_cluster: dict[str, Any]) -> bool:
    return (ray_cluster.get("status") or {}).get("state") == READY_STATE
