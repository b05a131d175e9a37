"""Pure builders of an experiment's child objects (PVCs, worker Deployments): manifests out,
nothing else.

Owner references are added by the caller (kopf.adopt), except for PVCs whose reclaim policy
is Retain: those are deliberately left unowned so garbage collection never deletes data.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tempotrain_workers.api import (
    INFERENCE_QUEUE,
    LABEL_PREFIX,
    RAY_QUEUE,
    BatchInferenceSpec,
    BertExperimentSpec,
    Cifar10ScalingSpec,
    PodSettings,
    ReclaimPolicy,
    VolumeSpec,
    worker_concurrency,
)
from tempotrain_workers.health import LIVE_PATH, READY_PATH
from tempotrain_workers.temporal_client import SECRET_MOUNT, TemporalConnection

from tempotrain_operator.settings import OperatorSettings

SNAPSHOTS_MOUNT = "/data/snapshots"
RUNS_MOUNT = "/data/runs"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU nodes are tainted so that only pods asking for GPUs land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
NON_ROOT_UID = 1000
# On every child: which experiment it belongs to (the operator's pod watch selects by it).
EXPERIMENT_LABEL = f"{LABEL_PREFIX}experiment"
HEALTH_PORT = 8081  # the worker's /livez and /readyz
METRICS_PORT = 9100  # the worker's /metrics (the chart's PodMonitor scrapes the port by name)
# (cpu, memory) requests of the CPU-side workers. Evaluation runs the model in its pod; the
# Ray driver only submits each scale to the Ray cluster and supervises it (the training and
# the Ray Train driver run on the Ray pods), so it asks for little.
CPU_WORKER_REQUESTS = {"eval": ("1", "4Gi"), "ray-driver": ("250m", "1Gi")}


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
    pod_defaults: PodSettings = field(default_factory=PodSettings)
    kueue: bool = False  # whether Kueue admits queued experiments and places their pods


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
        pod_defaults=settings.worker_pod_defaults,
        kueue=settings.kueue,
    )


def labels(experiment: Experiment[Any], component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tempotrain",
        "app.kubernetes.io/instance": experiment.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "tempotrain-operator",
        EXPERIMENT_LABEL: experiment.name,
    }


def worker_deployment_names(name: str, kind: str = "BertExperiment") -> list[str]:
    if kind == "Cifar10Scaling":
        return [f"{name}-ray-driver"]
    if kind == "BatchInference":
        return [f"{name}-inference"]
    return [f"{name}-training", f"{name}-eval"]


def claim_name(experiment: Experiment[Any], volume: str) -> str:
    return claim_name_of(experiment.name, getattr(experiment.spec.storage, volume), volume)


def claim_name_of(experiment_name: str, spec: VolumeSpec, volume: str) -> str:
    """The user's existing claim, or the one the operator makes: `<experiment>-<volume>`."""
    return spec.existing_claim or f"{experiment_name}-{volume}"


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
            "accessModes": [access_mode(experiment, volume)],
            "resources": {"requests": {"storage": spec.size}},
        },
    }
    if spec.storage_class_name:
        pvc["spec"]["storageClassName"] = spec.storage_class_name
    return pvc


RWO = "ReadWriteOnce"
RWX = "ReadWriteMany"


def access_mode(experiment: Experiment[Any], volume: str) -> str:
    """ReadWriteOnce, which every storage class provides, wherever the pods that mount the
    claim can share a node; ReadWriteMany (NFS, EFS, Filestore, CephFS ...) only where pods
    on several nodes must: a RayCluster's pods, or several inference pods."""
    spec: VolumeSpec = getattr(experiment.spec.storage, volume)
    if spec.access_mode:
        return spec.access_mode
    if isinstance(experiment.spec, Cifar10ScalingSpec):
        return RWX
    if isinstance(experiment.spec, BatchInferenceSpec):
        return RWX if experiment.spec.workers > 1 else RWO
    return RWO  # a BertExperiment: its eval pod runs on its trainer's node (co_located)


def co_located(experiment: Experiment[Any]) -> bool:
    """Whether a BertExperiment's eval pod must run on its training pod's node: unless both
    claims are ReadWriteMany, one node at a time can mount them."""
    return not all(access_mode(experiment, volume) == RWX for volume in ("snapshots", "runs"))


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


# The restricted Pod Security profile, for every pod the operator makes.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": NON_ROOT_UID,
    "runAsGroup": NON_ROOT_UID,
    "fsGroup": NON_ROOT_UID,
    # A claim of checkpoints holds many files: chown them all at every pod start only when
    # its root is not the pod's group already (minutes on a big volume, otherwise).
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
# The workers write only to their volumes and /tmp.
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    **RESTRICTED_CONTAINER,
    "readOnlyRootFilesystem": True,
}


def pod_fields(settings: PodSettings) -> dict[str, Any]:
    """The pod-level fields every pod the operator makes shares."""
    fields: dict[str, Any] = {
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        # The workers never call the Kubernetes API: no token in their pods to steal.
        "automountServiceAccountToken": False,
    }
    if settings.image_pull_secrets:
        fields["imagePullSecrets"] = [s.wire() for s in settings.image_pull_secrets]
    return fields


def apply_pod_settings(
    container: dict[str, Any], settings: PodSettings, ours: list[dict[str, Any]], *, gpus: int
) -> None:
    """The container's environment: ours, then the user's (which wins on a name both set)."""
    if gpus == 0:
        # CUDA images (the PyTorch base) set NVIDIA_VISIBLE_DEVICES=all, and the NVIDIA
        # runtime would hand such a container every GPU of its node, outside the scheduler.
        ours = [*ours, {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    theirs = [variable.wire() for variable in settings.env]
    named = {variable["name"] for variable in theirs}
    container["env"] = [v for v in ours if v["name"] not in named] + theirs
    if settings.env_from:
        container["envFrom"] = [source.wire() for source in settings.env_from]


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
    pod_affinity: dict[str, Any] = field(default_factory=dict)
    shared_memory: bool = False
    grace_seconds: int = 30
    replicas: int = 1
    # Recreate: never two trainers on one run directory. Chunked inference is idempotent, so
    # its pods may overlap while they roll.
    strategy: str = "Recreate"
    worker_args: tuple[str, ...] = ()
    settings: PodSettings = field(default_factory=PodSettings)  # the experiment's own


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
    tolerations = [t.wire() for t in user_tolerations]
    affinity: dict[str, Any] = {}
    if isinstance(spec, BertExperimentSpec) and co_located(experiment):
        # Its claims mount on one node at a time: eval goes where the trainer is (tolerating
        # its GPU taint), and a replacement trainer prefers the node that has them mounted.
        if role == "eval":
            affinity = {"requiredDuringSchedulingIgnoredDuringExecution": [
                _pods_of(experiment, "training")
            ]}  # fmt: skip
            if spec.resources.gpus > 0:
                tolerations.append(dict(GPU_TOLERATION))
        elif training:
            affinity = {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": _pods_of(experiment, "eval")}
            ]}  # fmt: skip
    shape = PodShape(
        queue={
            "training": workers.training_queue,
            "eval": workers.eval_queue,
            "ray-driver": workers.ray_queue,
        }[role],
        image=spec.workers.image or workers.image,
        pull_policy=spec.workers.image_pull_policy,
        cpu=spec.resources.cpu if training else CPU_WORKER_REQUESTS[role][0],
        memory=spec.resources.memory if training else CPU_WORKER_REQUESTS[role][1],
        gpus=spec.resources.gpus if training else 0,
        node_selector=dict(spec.resources.node_selector) if training else {},
        tolerations=tolerations,
        pod_affinity=affinity,
        shared_memory=training,
        # The trainer saves a checkpoint on SIGTERM; give it time to finish writing.
        grace_seconds=300 if training else 30,
        replicas=trainers(spec) if training else 1,
        settings=spec.workers,
    )
    return _deployment(experiment, workers, role, shape)


def trainers(spec: Any) -> int:
    """Training pods: one per trial a sweep runs at once (each trains one trial at a time),
    else one."""
    sweep = spec.sweep if isinstance(spec, BertExperimentSpec) else None
    return sweep.max_parallel if sweep is not None else 1


def _pods_of(experiment: Experiment[Any], role: str) -> dict[str, Any]:
    """A pod affinity term: the node of the experiment's `role` worker pod."""
    selected = labels(experiment, f"{role}-worker")
    keys = ("app.kubernetes.io/instance", "app.kubernetes.io/component")
    return {
        "labelSelector": {"matchLabels": {k: selected[k] for k in keys}},
        "topologyKey": "kubernetes.io/hostname",
    }


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
        # One chunk per GPU at a time (the worker spreads them over its GPUs), and the next
        # one prepared meanwhile.
        worker_args=(
            "--max-concurrent-activities",
            str(worker_concurrency(spec.gpus_per_worker)),
        ),
        settings=spec.image,
    )
    return _deployment(experiment, workers, "inference", shape)


def _deployment(
    experiment: Experiment[Any], workers: WorkerConfig, role: str, shape: PodShape
) -> dict[str, Any]:
    pod_labels = labels(experiment, f"{role}-worker")
    settings = shape.settings.over(workers.pod_defaults)
    volumes, mounts = data_volumes(experiment, shared_memory=shape.shared_memory)
    resources: dict[str, Any] = {"requests": {"cpu": shape.cpu, "memory": shape.memory}}
    tolerations = list(shape.tolerations)
    if shape.gpus > 0:
        resources["limits"] = {GPU_RESOURCE: str(shape.gpus)}
        tolerations.append(dict(GPU_TOLERATION))
    container = {
        "name": "worker",
        "image": shape.image,
        "imagePullPolicy": shape.pull_policy,
        # `command`, not `args`: args would be appended to the image's own entrypoint.
        "command": [
            "python",
            "-m",
            "tempotrain_workers",
            "--health-port",
            str(HEALTH_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            "--queue",
            shape.queue,
            *shape.worker_args,
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "ports": [
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Ready once connected to Temporal and polling; restarted only when its event loop
        # has not answered for 3 minutes (a training step never holds it that long).
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "health"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "health"},
            "initialDelaySeconds": 30,
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 6,
        },
    }
    apply_pod_settings(
        container,
        settings,
        [
            *workers.temporal.worker_environment(with_files=workers.temporal_secret is not None),
            {"name": "TEMPOTRAIN_SNAPSHOTS_ROOT", "value": SNAPSHOTS_MOUNT},
            {"name": "TEMPOTRAIN_RUNS_ROOT", "value": RUNS_MOUNT},
            {"name": "HF_HOME", "value": f"{SNAPSHOTS_MOUNT}/.hf-cache"},
            # PyTorch's CPU threads: its CPU request (whole cores, at least 1), not every core
            # of the node; trainers side by side (a sweep's) would otherwise slow each other.
            {
                "name": "OMP_NUM_THREADS",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}},
            },
        ],
        gpus=shape.gpus,
    )
    if workers.temporal_secret:
        volumes.append({"name": "temporal", "secret": {"secretName": workers.temporal_secret}})
        mounts.append({"name": "temporal", "mountPath": SECRET_MOUNT, "readOnly": True})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": shape.grace_seconds,
        **pod_fields(settings),
    }
    if shape.node_selector:
        pod_spec["nodeSelector"] = shape.node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if shape.pod_affinity:
        pod_spec["affinity"] = {"podAffinity": shape.pod_affinity}
    template = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{experiment.name}-{role}",
            "namespace": experiment.namespace,
            "labels": pod_labels,
            "annotations": {TEMPLATE_HASH: template_hash(template)},
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
            "template": template,
        },
    }


# On each worker Deployment: the hash of the pod template as built, so that a spec edit is
# rolled out only when it changes what the pods get (the apiserver's defaulting makes the
# stored template unlike the built one).
TEMPLATE_HASH = f"{LABEL_PREFIX}template-hash"


def template_hash(template: dict[str, Any]) -> str:
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
