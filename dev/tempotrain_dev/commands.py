"""Command lines of the host processes the platform's users start next to it: the operator
and a worker. One definition for the demo, the tests and the benchmarks."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Queues:
    training: str
    eval: str
    status: str
    ray: str | None = None  # None: the default, tempotrain-ray
    inference: str | None = None  # None: the default, tempotrain-inference


def operator_command(
    namespace: str, temporal_address: str, queues: Queues | None = None, *extra: str
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "tempotrain_operator",
        "--namespace",
        namespace,
        "--temporal-address",
        temporal_address,
    ]
    if queues is not None:
        argv += [
            "--status-queue",
            queues.status,
            "--training-queue",
            queues.training,
            "--eval-queue",
            queues.eval,
        ]
        if queues.ray is not None:
            argv += ["--ray-queue", queues.ray]
        if queues.inference is not None:
            argv += ["--inference-queue", queues.inference]
    return [*argv, *extra]


def worker_command(
    temporal_address: str, queues: list[str], snapshots: Path, runs: Path
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "tempotrain_workers",
        "--address",
        temporal_address,
        "--snapshots-root",
        str(snapshots),
        "--runs-root",
        str(runs),
    ]
    for queue in queues:
        argv += ["--queue", queue]
    return argv
