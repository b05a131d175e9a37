"""Full stack: CRDs on the real apiserver, the operator and a host worker as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.commands import Queues, operator_command, worker_command
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.platform import Platform
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.support import eventually


@dataclass
class Stack:
    """An operator watching one namespace and a host worker, on queues of their own."""

    namespace: str
    kubeconfig: Path
    temporal_address: str
    root: Path
    queues: Queues
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Host workers do the work here; the pods (on kwok nodes) never pull this image.
    worker_image: str = "tempotrain/workers:test"
    operator_args: tuple[str, ...] = ()
    # RayCluster pods on kwok nodes never run: Ray drivers start a Ray on the host instead.
    # None: the RayCluster's head, by its Service (real pods).
    ray_address: str | None = "local"

    @classmethod
    def fresh(
        cls, namespace: str, cluster: ClusterHandle, temporal_address: str, root: Path, **kw: Any
    ) -> Stack:
        """A stack on task queues of its own (no other test's worker picks up its work)."""
        suffix = uuid.uuid4().hex[:8]
        queues = Queues(
            training=f"train-{suffix}",
            eval=f"eval-{suffix}",
            status=f"op-{suffix}",
            ray=f"ray-{suffix}",
            inference=f"inf-{suffix}",
        )
        return cls(namespace, cluster.kubeconfig, temporal_address, root, queues, **kw)

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def model(self, source: Path) -> str:
        """The model folder as a spec names it: relative to the snapshots volume (a spec
        cannot point at the worker's own disk), linked there from where the test has it."""
        link = self.snapshots / "models" / source.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source, target_is_directory=True)
        return f"models/{source.name}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HF_HUB_OFFLINE": "1"}

    def start_operator(
        self, temporal_address: str | None = None, name: str = "operator", *extra: str
    ) -> None:
        """The operator; another `name` (and `extra` arguments) adds a replica beside it."""
        self._start(
            name,
            operator_command(
                self.namespace,
                temporal_address or self.temporal_address,
                self.queues,
                "--worker-image",
                self.worker_image,
                *(("--ray-address", self.ray_address) if self.ray_address else ()),
                *self.operator_args,
                *extra,
            ),
        )

    def start_worker(self, name: str = "worker", *extra: str) -> None:
        """A host worker on all the stack's queues; another `name` adds one beside it."""
        self._start(
            name,
            [
                *worker_command(
                    self.temporal_address,
                    [
                        self.queues.training,
                        self.queues.eval,
                        str(self.queues.ray),
                        str(self.queues.inference),
                    ],
                    self.snapshots,
                    self.runs,
                ),
                *extra,
            ],
        )

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self._env()
        )

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self, name: str) -> None:
        """SIGTERM, and wait for it to exit."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    def alive(self, name: str) -> bool:
        return name in self.processes and self.processes[name].poll() is None

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def stack(
    crds: None, cluster: ClusterHandle, temporal_address: str, namespace: str, tmp_path: Path
) -> Iterator[Stack]:
    result = Stack.fresh(namespace, cluster, temporal_address, tmp_path)
    write_sentiment_jsonl(result.snapshots / "datasets" / "sentiment.jsonl", 400)
    result.start_operator()
    result.start_worker()
    yield result
    result.stop_all()


@pytest.fixture
def operator_only(
    crds: None, cluster: ClusterHandle, temporal_address: str, namespace: str, tmp_path: Path
) -> Iterator[Stack]:
    """An operator and no worker: experiments are reconciled, created and started, and stay
    Pending. Images it allows: registry.example/ml/*."""
    result = Stack.fresh(
        namespace,
        cluster,
        temporal_address,
        tmp_path,
        operator_args=("--allowed-image", "registry.example/ml/*"),
    )
    result.start_operator()
    yield result
    result.stop_all()


def experiment(name: str, model: str, **spec_overrides: Any) -> dict[str, Any]:
    """A BertExperiment; `model` as the spec names it (see `Stack.model`)."""
    spec: dict[str, Any] = {
        "model": {"name": model},
        "dataset": {"file": "datasets/sentiment.jsonl"},
        "training": {
            "epochs": 2,
            "batchSize": 16,
            "learningRate": 5e-5,
            "maxSeqLength": 32,
            "saveSteps": 8,
        },
        "resources": {"gpus": 1},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "tempotrain.dev/v1alpha1",
        "kind": "BertExperiment",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(cluster: ClusterHandle, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def kube_json(cluster: ClusterHandle, namespace: str, kind: str, name: str = "") -> Any:
    """`kubectl get <kind> [name] -o json` in the namespace, parsed."""
    args = ["get", kind, *([name] if name else []), "-n", namespace, "-o", "json"]
    return json.loads(cluster.kubectl(*args))


def experiment_status(
    cluster: ClusterHandle, namespace: str, name: str, kind: str = "bertexperiments"
) -> dict[str, Any]:
    return dict(kube_json(cluster, namespace, f"{kind}.tempotrain.dev", name).get("status") or {})


def conditions_by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def pod_ready(pod: dict[str, Any]) -> bool:
    """Its Ready condition is True: the containers run and their readiness probes pass."""
    return conditions_by_type(pod["status"]).get("Ready", {}).get("status") == "True"


async def until_released(
    cluster: ClusterHandle, namespace: str, resource: str, name: str, within: float = 60
) -> dict[str, Any]:
    """Wait (bounded) until the experiment's compute is released (condition ComputeReleased,
    set once its workflow has closed); its status then."""

    async def released() -> dict[str, Any] | None:
        status = dict(kube_json(cluster, namespace, resource, name).get("status") or {})
        condition = conditions_by_type(status).get("ComputeReleased") or {}
        return status if condition.get("status") == "True" else None

    return await eventually(released, within=within, what=f"{name}'s compute to be released")


async def until_ended(
    cluster: ClusterHandle, namespace: str, name: str, within: float, what: str = ""
) -> dict[str, Any]:
    """Wait (bounded) until the BertExperiment has Succeeded or Failed; its status then."""

    async def ended() -> dict[str, Any] | None:
        status = experiment_status(cluster, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return await eventually(ended, within=within, what=what or f"{name} to end")


@pytest.fixture
def pod_stack(
    crds: None,
    cluster: ClusterHandle,
    temporal_address: str,
    pod_namespace: str,
    worker_image: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    """The operator as a host process; the work only in pods."""
    stack = Stack.fresh(
        pod_namespace, cluster, temporal_address, tmp_path, worker_image=worker_image,
        ray_address=None,
    )  # fmt: skip
    stack.start_operator()
    yield stack
    stack.stop_all()


@pytest.fixture
def node_runtime(request: pytest.FixtureRequest, real_node: str) -> Ctr:
    """containerd of the session platform's node, to kill a container as the node would."""
    if "TEMPOTRAIN_KUBECONFIG" in os.environ:
        pytest.skip("killing a container needs the platform's own node")
    platform: Platform = request.getfixturevalue("own_platform")
    node = platform.node
    assert node is not None
    return node.ctr


def kill_container(runtime: Ctr, pod: dict[str, Any]) -> None:
    """SIGKILL the pod's first container as an OOM kill or a crash would: no grace."""
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    runtime("tasks", "kill", "--all", "--signal", "SIGKILL", container)
