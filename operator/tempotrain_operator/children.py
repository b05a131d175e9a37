"""Pure builders of an experiment's child objects (PVCs, worker Deployments): manifests out,
nothing else.

Owner references are added by the caller (kopf.adopt), except for PVCs whose reclaim policy
is Retain: those are deliberately left unowned so garbage collection never deletes data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tempotrain_workers.api import (
    INFERENCE_QUEUE,
    LABEL_PREFIX,
    RAY_QUEUE,
    BatchInferenceSpec,
    BertExperimentSpec,
    Cifar10ScalingSpec,
    ReclaimPolicy,
    VolumeSpec,
)
from tempotrain_workers.temporal_client import SECRET_MOUNT, TemporalConnection

from tempotrain_operator.settings import OperatorSettings

SNAPSHOTS_MOUNT = "/data/snapshots"
RUNS_MOUNT = "/data/runs"
GPU_RESOURCE = "nvidia.com/gpu"
NON_ROOT_UID = 1000


SpecT = TypeVar("SpecT", BertExperimentSpec, Cifar10ScalingSpec, BatchInferenceSpec)


@dataclass(frozen=True)
class Experiment(Generic[SpecT]):
    """What the builders need to know about the custom resource."""

    name: str
    namespace: str
    uid: str
    spec: SpecT


@dataclass(frozen=True)
class WorkerConfig:
    image: str
    temporal: TemporalConnection
    training_queue: str
    eval_queue: str
    ray_queue: str = RAY_QUEUE
    inference_queue: str = INFERENCE_QUEUE
    temporal_secret: str | None = None  # mounted for the TLS files / API key workers need


def worker_config(settings: OperatorSettings, uid: str) -> WorkerConfig:
    """What an experiment's worker pods need: image, Temporal, and its task queues."""
    training_queue, eval_queue = settings.queues_for(uid)
    return WorkerConfig(
        image=settings.worker_image,
        temporal=settings.temporal,
        temporal_secret=settings.worker_temporal_secret,
        training_queue=training_queue,
        eval_queue=eval_queue,
        ray_queue=settings.ray_queue_for(uid),
        inference_queue=settings.inference_queue_for(uid),
    )


def labels(experiment: Experiment[Any], component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tempotrain",
        "app.kubernetes.io/instance": experiment.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "tempotrain-operator",
        f"{LABEL_PREFIX}experiment": experiment.name,
    }


def worker_deployment_names(name: str, kind: str = "BertExperiment") -> list[str]:
    if kind == "Cifar10Scaling":
        return [f"{name}-ray-driver"]
    if kind == "BatchInference":
        return [f"{name}-inference"]
    return [f"{name}-training", f"{name}-eval"]


def claim_name(experiment: Experiment[Any], volume: str) -> str:
    spec: VolumeSpec = getattr(experiment.spec.storage, volume)
    return spec.existing_claim or f"{experiment.name}-{volume}"


def build_pvc(experiment: Experiment[Any], volume: str) -> dict[str, Any] | None:
    """The PVC for `snapshots` or `runs`; None when the user brings an existing claim."""
    spec: VolumeSpec = getattr(experiment.spec.storage, volume)
    if spec.existing_claim:
        return None
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(experiment, volume),
            "namespace": experiment.namespace,
            "labels": labels(experiment, f"{volume}-volume"),
            "annotations": {f"{LABEL_PREFIX}reclaim-policy": spec.reclaim_policy.value},
        },
        "spec": {
            # Several worker pods (training, eval) mount it; RWX where the class supports it.
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": spec.size}},
        },
    }
    if spec.storage_class_name:
        pvc["spec"]["storageClassName"] = spec.storage_class_name
    return pvc


def pvc_is_owned(experiment: Experiment[Any], volume: str) -> bool:
    spec: VolumeSpec = getattr(experiment.spec.storage, volume)
    return spec.reclaim_policy == ReclaimPolicy.DELETE and not spec.existing_claim


def data_volumes(
    experiment: Experiment[Any], *, shared_memory: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The snapshots and runs claims at their fixed mount points, plus a writable /tmp; with
    `shared_memory`, a memory-backed /dev/shm (a container's default 64 MiB is too small for
    DataLoader workers, NCCL and Ray's object store)."""
    volumes = [
        {"name": volume, "persistentVolumeClaim": {"claimName": claim_name(experiment, volume)}}
        for volume in ("snapshots", "runs")
    ]
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts = [
        {"name": "snapshots", "mountPath": SNAPSHOTS_MOUNT},
        {"name": "runs", "mountPath": RUNS_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shared_memory:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


@dataclass(frozen=True)
class PodShape:
    """What differs between worker roles: queue, size, placement, how many, how they roll."""

    queue: str
    image: str
    pull_policy: str
    cpu: str
    memory: str
    gpus: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    shared_memory: bool = False
    grace_seconds: int = 30
    replicas: int = 1
    # Recreate: never two trainers on one run directory. Chunked inference is idempotent, so
    # its pods may overlap while they roll.
    strategy: str = "Recreate"
    worker_args: tuple[str, ...] = ()


def build_worker_deployment(
    experiment: Experiment[Any], workers: WorkerConfig, role: str
) -> dict[str, Any]:
    """`training` (GPU), `eval` (CPU: coordinator, snapshots, evaluation) or `ray-driver`
    (CPU: the Cifar10Scaling workflow and the Ray Train drivers it supervises) worker pods."""
    spec = experiment.spec
    training = role == "training"
    # BertExperiment's tolerations apply to all its workers; a Cifar10Scaling's driver is a
    # plain CPU pod (its Ray pods carry the spec's tolerations).
    user_tolerations = spec.resources.tolerations if isinstance(spec, BertExperimentSpec) else []
    shape = PodShape(
        queue={
            "training": workers.training_queue,
            "eval": workers.eval_queue,
            "ray-driver": workers.ray_queue,
        }[role],
        image=spec.workers.image or workers.image,
        pull_policy=spec.workers.image_pull_policy,
        cpu=spec.resources.cpu if training else "1",
        memory=spec.resources.memory if training else "4Gi",
        gpus=spec.resources.gpus if training else 0,
        node_selector=dict(spec.resources.node_selector) if training else {},
        tolerations=[t.wire() for t in user_tolerations],
        shared_memory=training,
        # The trainer saves a checkpoint on SIGTERM; give it time to finish writing.
        grace_seconds=300 if training else 30,
    )
    return _deployment(experiment, workers, role, shape)


def build_inference_deployment(
    experiment: Experiment[BatchInferenceSpec], workers: WorkerConfig
) -> dict[str, Any]:
    """`workers` inference pods, each with `gpusPerWorker` GPUs and as many chunks at a time,
    polling the job's queue."""
    spec = experiment.spec
    shape = PodShape(
        queue=workers.inference_queue,
        image=spec.image.image or workers.image,
        pull_policy=spec.image.image_pull_policy,
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        gpus=spec.gpus_per_worker,
        node_selector=dict(spec.resources.node_selector),
        tolerations=[t.wire() for t in spec.resources.tolerations],
        shared_memory=True,
        replicas=spec.workers,
        strategy="RollingUpdate",
        # One chunk per GPU at a time: the worker spreads them over its GPUs.
        worker_args=("--max-concurrent-activities", str(max(1, spec.gpus_per_worker))),
    )
    return _deployment(experiment, workers, "inference", shape)


def _deployment(
    experiment: Experiment[Any], workers: WorkerConfig, role: str, shape: PodShape
) -> dict[str, Any]:
    pod_labels = labels(experiment, f"{role}-worker")
    volumes, mounts = data_volumes(experiment, shared_memory=shape.shared_memory)
    resources: dict[str, Any] = {"requests": {"cpu": shape.cpu, "memory": shape.memory}}
    tolerations = list(shape.tolerations)
    if shape.gpus > 0:
        resources["limits"] = {GPU_RESOURCE: str(shape.gpus)}
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    container = {
        "name": "worker",
        "image": shape.image,
        "imagePullPolicy": shape.pull_policy,
        # `command`, not `args`: args would be appended to the image's own entrypoint.
        "command": [
            "python",
            "-m",
            "tempotrain_workers",
            "--queue",
            shape.queue,
            *shape.worker_args,
        ],
        "env": [
            *workers.temporal.worker_environment(with_files=workers.temporal_secret is not None),
            {"name": "TEMPOTRAIN_SNAPSHOTS_ROOT", "value": SNAPSHOTS_MOUNT},
            {"name": "TEMPOTRAIN_RUNS_ROOT", "value": RUNS_MOUNT},
            {"name": "HF_HOME", "value": f"{SNAPSHOTS_MOUNT}/.hf-cache"},
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if workers.temporal_secret:
        volumes.append({"name": "temporal", "secret": {"secretName": workers.temporal_secret}})
        mounts.append({"name": "temporal", "mountPath": SECRET_MOUNT, "readOnly": True})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": shape.grace_seconds,
    }
    if shape.node_selector:
        pod_spec["nodeSelector"] = shape.node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{experiment.name}-{role}",
            "namespace": experiment.namespace,
            "labels": pod_labels,
        },
        "spec": {
            "replicas": shape.replicas,
            "strategy": {"type": shape.strategy},
            "selector": {
                "matchLabels": {
                    k: pod_labels[k]
                    for k in ("app.kubernetes.io/instance", "app.kubernetes.io/component")
                }
            },
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }
