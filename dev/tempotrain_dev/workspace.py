"""`python -m tempotrain_dev workspace`: a namespace of your own on the running platform, for
an operator and a worker you start yourself (not the demo's): the CRDs, the namespace (its
pods go to kwok nodes, so your host processes do the work), the claim the local examples
read their model and data from, filled, and the exact commands to run next."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tempotrain_workers.api import EVAL_QUEUE, INFERENCE_QUEUE, RAY_QUEUE, TRAINING_QUEUE

from tempotrain_dev.cluster import kwok_namespace
from tempotrain_dev.commands import operator_command, worker_command
from tempotrain_dev.demo import data_claim, prepare_volume
from tempotrain_dev.platform import Platform
from tempotrain_dev.tools import REPO_ROOT


class PlatformDown(RuntimeError):
    pass


def prepare_workspace(platform: Platform, namespace: str, runs: Path) -> list[str]:
    """Everything but the two processes; the lines that tell how to start them."""
    if not (platform.cluster.kubeconfig.exists() and platform.temporal.process.is_running()):
        raise PlatformDown("the platform is not up: run `make up` first")
    cluster = platform.cluster
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(kwok_namespace(namespace)))
    # The claim's folder on this machine is the snapshots volume the worker reads.
    snapshots = data_claim(cluster, namespace)
    prepare_volume(snapshots)
    runs.mkdir(parents=True, exist_ok=True)
    address = platform.temporal.address
    queues = [TRAINING_QUEUE, EVAL_QUEUE, RAY_QUEUE, INFERENCE_QUEUE]
    operator = operator_command(namespace, address, None, "--ray-address", "local")
    worker = worker_command(address, queues, snapshots, runs.resolve())
    return [
        f"namespace {namespace}: CRDs applied, its pods go to kwok nodes (your processes do "
        "the work)",
        f"the example's model and data: {snapshots} (the claim {namespace}/demo-data)",
        "",
        "# 1. your operator (one terminal):",
        f"source {platform.env_file}",
        shlex.join(_relative(operator)),
        "# 2. your worker (another terminal):",
        shlex.join(_relative(worker)),
        "# 3. your experiment:",
        f"kubectl apply -n {namespace} -f examples/bert-experiment-local.yaml",
        f"kubectl get bexp -n {namespace} -w",
    ]


def _relative(argv: list[str]) -> list[str]:
    """The venv's python as `.venv/bin/python` when it is this repository's (shorter to read)."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return [".venv/bin/python" if Path(a) == venv_python else a for a in argv]
