"""Operator settings: flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass, field

from pydantic import ValidationError
from tempotrain_workers.api import (
    EVAL_QUEUE,
    INFERENCE_QUEUE,
    OPERATOR_QUEUE,
    RAY_QUEUE,
    TRAINING_QUEUE,
    PodSettings,
)
from tempotrain_workers.metrics import add_metrics_port_argument
from tempotrain_workers.temporal_client import (
    TemporalConnection,
    add_connection_arguments,
    connection_from,
)

DEFAULT_WORKER_IMAGE = "ghcr.io/tempotrain/workers:0.1.0"
# A replica's name (--identity) is a DNS label: it is part of its Lease's and finalizer's names.
IDENTITY_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: list[str]  # empty: cluster-wide
    temporal: TemporalConnection
    worker_image: str
    status_queue: str
    training_queue: str
    eval_queue: str
    per_experiment_queues: bool
    liveness_endpoint: str | None
    resync_seconds: float
    progress_seconds: float
    ray_queue: str = RAY_QUEUE
    inference_queue: str = INFERENCE_QUEUE
    # Where Ray drivers run when the operator created the RayCluster; None: the cluster's own
    # Ray Jobs API. The local platform says `local`: its RayCluster pods are kwok's, so the
    # host worker starts a Ray of its own.
    ray_address: str | None = None
    # A Secret in each experiment's namespace with the TLS files / API key its worker pods
    # need to reach Temporal as the operator does (keys: ca.crt, tls.crt, tls.key, api-key).
    worker_temporal_secret: str | None = None
    # Pull secrets and environment every worker and Ray pod gets (the chart's `workers.*`);
    # an experiment's `spec.workers` adds to them.
    worker_pod_defaults: PodSettings = field(default_factory=PodSettings)
    # Patterns (fnmatch) an experiment's own images must match; empty: any image. The images
    # run with the experiment's claims and Temporal credentials: an admin may pin them.
    allowed_images: tuple[str, ...] = ()
    # Kueue admits experiments labelled kueue.x-k8s.io/queue-name (`queueing`); off: the
    # label is ignored, and an event says so.
    kueue: bool = False
    queue_seconds: float = 2.0  # how often a queued experiment's Workload is looked at
    metrics_port: int | None = None  # None: no /metrics
    # Replicas share the experiments (`sharding`): this one's name and where the leases are.
    sharded: bool = False
    identity: str = ""
    lease_namespace: str = "default"
    lease_seconds: float = 15.0

    def queues_for(self, uid: str) -> tuple[str, str]:
        """(training, eval) queues of one experiment. Per-experiment queues keep a worker pod
        from picking up an activity whose PVCs it has not mounted; shared queues suit host
        workers that see every experiment's data (the local platform)."""
        return self._own(self.training_queue, uid), self._own(self.eval_queue, uid)

    def ray_queue_for(self, uid: str) -> str:
        return self._own(self.ray_queue, uid)

    def inference_queue_for(self, uid: str) -> str:
        return self._own(self.inference_queue, uid)

    def _own(self, queue: str, uid: str) -> str:
        return f"{queue}-{uid[:8]}" if self.per_experiment_queues else queue


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _env_list(name: str) -> list[str]:
    """A comma-separated environment variable, empty items left out."""
    return [item for item in (_env(name) or "").split(",") if item]


def parse_settings(argv: list[str] | None = None) -> OperatorSettings:
    parser = argparse.ArgumentParser(
        prog="python -m tempotrain_operator", description="The TempoTrain operator (kopf)."
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        help="watch this namespace (repeatable; env TEMPOTRAIN_NAMESPACES, "
        "comma-separated); default: all namespaces",
    )
    add_connection_arguments(parser)
    parser.add_argument(
        "--worker-image", default=_env("TEMPOTRAIN_WORKER_IMAGE", DEFAULT_WORKER_IMAGE)
    )
    parser.add_argument("--status-queue", default=_env("TEMPOTRAIN_STATUS_QUEUE", OPERATOR_QUEUE))
    parser.add_argument(
        "--training-queue", default=_env("TEMPOTRAIN_TRAINING_QUEUE", TRAINING_QUEUE)
    )
    parser.add_argument("--eval-queue", default=_env("TEMPOTRAIN_EVAL_QUEUE", EVAL_QUEUE))
    parser.add_argument(
        "--worker-temporal-secret",
        default=_env("TEMPOTRAIN_WORKER_TEMPORAL_SECRET"),
        help="Secret (in each experiment's namespace) mounted into worker pods for their "
        "Temporal TLS files / API key: keys ca.crt, tls.crt, tls.key, api-key",
    )
    parser.add_argument(
        "--worker-pod-defaults",
        default=_env("TEMPOTRAIN_WORKER_POD_DEFAULTS", "{}"),
        help="JSON: imagePullSecrets, env and envFrom for every worker and Ray pod, as in "
        "an experiment's spec.workers (which adds to them)",
    )
    parser.add_argument("--ray-queue", default=_env("TEMPOTRAIN_RAY_QUEUE", RAY_QUEUE))
    parser.add_argument(
        "--inference-queue", default=_env("TEMPOTRAIN_INFERENCE_QUEUE", INFERENCE_QUEUE)
    )
    parser.add_argument(
        "--ray-address",
        default=_env("TEMPOTRAIN_RAY_ADDRESS"),
        help="Ray address handed to Cifar10Scaling workflows instead of their RayCluster's "
        "(`local`: each driver starts a Ray on its worker's machine; for the local platform)",
    )
    parser.add_argument(
        "--per-experiment-queues",
        action="store_true",
        default=_env("TEMPOTRAIN_PER_EXPERIMENT_QUEUES", "") == "true",
    )
    parser.add_argument(
        "--liveness-endpoint",
        default=_env("TEMPOTRAIN_LIVENESS_ENDPOINT"),
        help="e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=float(_env("TEMPOTRAIN_RESYNC_SECONDS", "60") or 60)
    )
    parser.add_argument(
        "--allowed-image",
        action="append",
        dest="allowed_images",
        metavar="PATTERN",
        help="an image an experiment may set in spec.workers.image / spec.ray.image / "
        "spec.image.image, as an fnmatch pattern (repeatable; env TEMPOTRAIN_ALLOWED_IMAGES, "
        "comma-separated); default: any",
    )
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=float(_env("TEMPOTRAIN_PROGRESS_SECONDS", "5") or 5),
        help="how often a training experiment's .status.progress is read from its running "
        "attempt's heartbeat",
    )
    parser.add_argument(
        "--kueue",
        action="store_true",
        default=_env("TEMPOTRAIN_KUEUE", "") == "true",
        help="Kueue admits experiments labelled kueue.x-k8s.io/queue-name: each gets a "
        "Workload and waits (phase Queued) until it is admitted (env TEMPOTRAIN_KUEUE=true)",
    )
    parser.add_argument(
        "--queue-seconds",
        type=float,
        default=float(_env("TEMPOTRAIN_QUEUE_SECONDS", "2") or 2),
        help="how often a queued experiment's Workload is looked at (admission, eviction)",
    )
    add_sharding_arguments(parser)
    add_metrics_port_argument(parser)
    args = parser.parse_args(argv)
    try:
        pod_defaults = PodSettings.model_validate_json(args.worker_pod_defaults)
    except ValidationError as err:  # at startup, in one message: never a pod built half-right
        parser.error(f"--worker-pod-defaults / TEMPOTRAIN_WORKER_POD_DEFAULTS: {err}")
    namespaces = args.namespaces or _env_list("TEMPOTRAIN_NAMESPACES")
    identity = args.identity.lower()
    if args.sharded and not IDENTITY_PATTERN.match(identity):
        parser.error(
            f"--identity / TEMPOTRAIN_OPERATOR_IDENTITY: {identity!r} must be a DNS label "
            "(lowercase letters, digits and '-'; it names this replica's Lease and finalizer)"
        )
    if args.lease_seconds < 3:
        parser.error("--lease-seconds must be at least 3 (the lease is renewed every third)")
    return OperatorSettings(
        namespaces=namespaces,
        temporal=connection_from(args),
        worker_image=args.worker_image,
        status_queue=args.status_queue,
        training_queue=args.training_queue,
        eval_queue=args.eval_queue,
        per_experiment_queues=args.per_experiment_queues,
        liveness_endpoint=args.liveness_endpoint,
        resync_seconds=args.resync_seconds,
        progress_seconds=args.progress_seconds,
        ray_queue=args.ray_queue,
        inference_queue=args.inference_queue,
        ray_address=args.ray_address,
        worker_temporal_secret=args.worker_temporal_secret,
        worker_pod_defaults=pod_defaults,
        allowed_images=tuple(args.allowed_images or _env_list("TEMPOTRAIN_ALLOWED_IMAGES")),
        kueue=args.kueue,
        queue_seconds=args.queue_seconds,
        metrics_port=args.metrics_port,
        sharded=args.sharded,
        identity=identity,
        lease_namespace=args.lease_namespace or (namespaces[0] if namespaces else "default"),
        lease_seconds=args.lease_seconds,
    )


def add_sharding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sharded",
        action="store_true",
        default=_env("TEMPOTRAIN_SHARDED", "") == "true",
        help="run as one of several replicas: each experiment is handled by one live replica "
        "(by a hash of its uid), and a dead replica's go to the others (env "
        "TEMPOTRAIN_SHARDED=true)",
    )
    parser.add_argument(
        "--identity",
        default=_env("TEMPOTRAIN_OPERATOR_IDENTITY") or _env("POD_NAME") or _host_identity(),
        help="this replica's name, unique among the replicas (env TEMPOTRAIN_OPERATOR_IDENTITY, "
        "else POD_NAME; default: host name and process id)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=_env("TEMPOTRAIN_LEASE_NAMESPACE") or _env("POD_NAMESPACE"),
        help="where the replicas' Leases are (env TEMPOTRAIN_LEASE_NAMESPACE, else "
        "POD_NAMESPACE; default: the first watched namespace, or default)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=float(_env("TEMPOTRAIN_LEASE_SECONDS", "15") or 15),
        help="a replica that has not renewed its Lease for this long is taken for dead and "
        "its experiments go to the others",
    )


def _host_identity() -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())
    return f"{host.strip('-')[:40]}-{os.getpid()}"
