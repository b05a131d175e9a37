"""Worker settings from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from tempotrain_workers.api import EVAL_QUEUE, TRAINING_QUEUE
from tempotrain_workers.metrics import add_metrics_port_argument
from tempotrain_workers.temporal_client import (
    TemporalConnection,
    add_connection_arguments,
    connection_from,
)

ENV_QUEUES = "TEMPOTRAIN_QUEUES"  # comma-separated


@dataclass(frozen=True)
class WorkerSettings:
    queues: list[str]
    temporal: TemporalConnection
    snapshots_root: Path
    runs_root: Path
    max_concurrent_activities: int | None
    health_port: int | None = None  # None: no probe endpoint (a worker on a host)
    metrics_port: int | None = None  # None: no /metrics


def parse_worker_settings(argv: list[str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(
        prog="python -m tempotrain_workers",
        description="A TempoTrain Temporal worker: polls the given task queues and runs the "
        "BERT workflows and activities.",
    )
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        help=f"task queue to poll; repeatable (env {ENV_QUEUES}, comma-separated; "
        f"default {TRAINING_QUEUE} and {EVAL_QUEUE})",
    )
    # --address/--namespace: the worker's historical short flags (no Kubernetes namespace here).
    add_connection_arguments(
        parser,
        address_flags=("--address", "--temporal-address"),
        namespace_flags=("--namespace", "--temporal-namespace"),
    )
    parser.add_argument(
        "--snapshots-root",
        type=Path,
        default=Path(os.environ.get("TEMPOTRAIN_SNAPSHOTS_ROOT", "/data/snapshots")),
        help="dataset snapshots (env TEMPOTRAIN_SNAPSHOTS_ROOT)",
    )
    parser.add_argument(
        "--runs-root",
        type=Path,
        default=Path(os.environ.get("TEMPOTRAIN_RUNS_ROOT", "/data/runs")),
        help="checkpoints and trained models (env TEMPOTRAIN_RUNS_ROOT)",
    )
    parser.add_argument(
        "--max-concurrent-activities",
        type=int,
        default=None,
        help="default: 1 on the training and Ray queues (one job per GPU set or Ray "
        "cluster), 2 on the inference queue (one chunk scored, the next one prepared), else 8",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("TEMPOTRAIN_HEALTH_PORT", "0")) or None,
        help="serve GET /livez and /readyz on this port for the pod's probes (env "
        "TEMPOTRAIN_HEALTH_PORT; default: none)",
    )
    add_metrics_port_argument(parser)
    args = parser.parse_args(argv)
    queues = args.queues or [q for q in os.environ.get(ENV_QUEUES, "").split(",") if q]
    return WorkerSettings(
        queues=queues or [TRAINING_QUEUE, EVAL_QUEUE],
        temporal=connection_from(args),
        snapshots_root=args.snapshots_root,
        runs_root=args.runs_root,
        max_concurrent_activities=args.max_concurrent_activities,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
    )
