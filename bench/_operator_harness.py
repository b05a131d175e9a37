"""A platform, CRDs and an operator process for the operator benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tempotrain_dev.cluster import AUDIT_LOG_ENV, kwok_namespace
from tempotrain_dev.commands import Queues, operator_command, worker_command
from tempotrain_dev.platform import Platform
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for

# The operator's own user (in system:masters, as admin is): the apiserver's audit log tells
# its requests from the controllers', kwok's and kubectl's.
OPERATOR_USER = "tempotrain-operator"


@dataclass
class Bench:
    kubeconfig: Path
    operator_kubeconfig: Path
    temporal_address: str
    kubectl_path: Path
    root: Path
    namespace: str
    queues: Queues

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HF_HUB_OFFLINE": "1"}

    def start_operator(self, *extra: str, name: str = "operator") -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            operator_command(self.namespace, self.temporal_address, self.queues, *extra),
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**self.env(), "KUBECONFIG": str(self.operator_kubeconfig)},
        )
        wait_for(
            lambda: b"status sink polling" in log.read_bytes(),
            timeout=60,
            what="the operator to start",
            detail=lambda: log.read_text()[-2000:],
        )
        return process

    def start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            worker_command(
                self.temporal_address,
                [self.queues.training, self.queues.eval],
                self.root / "snapshots",
                self.root / "runs",
            ),
            stdout=(self.root / "worker.log").open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env(),
        )


@contextlib.contextmanager
def bench_platform(prefix: str, *, audit: bool = False) -> Iterator[Bench]:
    """`audit`: the apiserver writes a line per request to `audit_log(bench)`."""
    # SIGTERM (timeout, pkill) must still run the `finally` that stops the platform.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        platform = Platform(Path(tmp) / "platform")
        if audit:
            os.environ[AUDIT_LOG_ENV] = str(Path(tmp) / "audit.log")
        try:
            platform.up(real_node=False, log=lambda _: None)
            cluster = platform.cluster
            cluster.pki.ensure({OPERATOR_USER: "system:masters"})
            operator_kubeconfig = cluster.pki.write_kubeconfig(
                Path(tmp) / "operator.kubeconfig", cluster.server(), OPERATOR_USER
            )
            suffix = uuid.uuid4().hex[:8]
            bench = Bench(
                kubeconfig=cluster.kubeconfig,
                operator_kubeconfig=operator_kubeconfig,
                temporal_address=platform.temporal.address,
                kubectl_path=cluster.tools.kubectl,
                root=Path(tmp),
                namespace=f"bench-{suffix}",
                queues=Queues(
                    training=f"train-{suffix}", eval=f"eval-{suffix}", status=f"op-{suffix}"
                ),
            )
            bench.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
            wait_for(lambda: _established(bench), timeout=30, what="the CRD to be established")
            # Its pods go to kwok nodes: no containers for hundreds of experiments.
            bench.kubectl("apply", "-f", "-", input=json.dumps(kwok_namespace(bench.namespace)))
            yield bench
        finally:
            os.environ.pop(AUDIT_LOG_ENV, None)
            platform.down(log=lambda _: None)


def audit_log(bench: Bench) -> Path:
    return bench.root / "audit.log"


def _established(bench: Bench) -> bool:
    crd = json.loads(bench.kubectl("get", "crd", "bertexperiments.tempotrain.dev", "-o", "json"))
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds_by_process() -> dict[str, float]:
    """CPU seconds (user + system) that the processes below this one have used so far, by
    command name; a python process by the module it runs (`-m tempotrain_operator`)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    usage: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ... utime stime" — comm may hold spaces and parentheses.
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        usage[pid] = (comm, (int(fields[11]) + int(fields[12])) / ticks)
    me, totals = os.getpid(), dict[str, float]()
    for pid, (comm, seconds) in usage.items():
        ancestor = parents.get(pid, 0)
        while ancestor not in (0, 1, me):
            ancestor = parents.get(ancestor, 0)
        if ancestor == me:
            name = _python_module(pid) if comm.startswith("python") else comm
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


def _python_module(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return "python"
    return argv[argv.index("-m") + 1] if "-m" in argv[:-1] else "python"
