"""The whole local platform: the Kubernetes control plane, a real node where the machine
allows one, and the Temporal dev server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path

from tempotrain_dev import node_support
from tempotrain_dev.cluster import LocalCluster, cluster_processes, stop_cluster
from tempotrain_dev.images import BuiltImage, ImageStore, ProjectImage
from tempotrain_dev.node_images import NodeImageSeed
from tempotrain_dev.node_network import NetworkError, NodeNetwork, claim_network, recorded_network
from tempotrain_dev.processes import ManagedProcess, kill_leftovers, leftovers
from tempotrain_dev.prometheus_server import LocalPrometheus
from tempotrain_dev.real_node import RealNode, node_processes
from tempotrain_dev.temporal_server import LocalTemporal
from tempotrain_dev.tools import REPO_ROOT, ensure_tools

# What `make demo` runs beside the platform (dev/tempotrain_dev/demo.py): the operator (pods on
# the real node do the work), or an operator and a worker on the host (no real node).
DEMO_PROCESSES = ("operator", "operator-host", "worker-host")


def default_state_dir() -> Path:
    return Path(os.environ.get("TEMPOTRAIN_STATE_DIR", REPO_ROOT / ".tempotrain" / "platform"))


class Platform:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.temporal = LocalTemporal(self.state_dir / "temporal")
        self.prometheus = LocalPrometheus(self.state_dir / "prometheus")
        self.node_dir = self.state_dir / "node"
        # The node's network once claimed (by `up`); only read here, never made.
        self.network: NodeNetwork | None = recorded_network(self.node_dir)

    @property
    def node_network(self) -> NodeNetwork | None:
        """The real node's network, when this platform has one."""
        return self.network if self.network and self.network.exists() else None

    @cached_property
    def cluster(self) -> LocalCluster:
        # Built lazily: finding the tools may mean building them, which Temporal does not need.
        return LocalCluster(self.state_dir / "cluster", ensure_tools(), self.node_network)

    @property
    def node(self) -> RealNode | None:
        """The real node, when this platform has one; needs the tools (see `cluster`)."""
        network = self.node_network
        if network is None or self.no_node_reason is not None:
            return None
        return RealNode(self.node_dir, network, self.cluster)

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    @property
    def no_node_reason(self) -> str | None:
        """Why this platform runs with kwok nodes only (None: it has a real node, or is down)."""
        record = self.node_dir / "unavailable"
        return record.read_text().strip() if record.exists() else None

    def up(
        self,
        *,
        cluster: bool = True,
        temporal: bool = True,
        real_node: bool = True,
        prometheus: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        """Start what is not running. The real node's network comes first, whichever part is
        asked for: Temporal and the apiserver listen on its host side, where pods reach them."""
        if real_node:
            self._claim_network(log)
        elif self.node_network is None:
            self._no_node("asked for none (--no-real-node)", log)
        network = self.node_network
        if temporal:
            self.temporal.up(log, ip=network.host_ip if network else "127.0.0.1")
        if cluster:
            self.cluster.up(log)
            if network and real_node:
                self._node_up(log)
        if prometheus:
            self.prometheus.up(log)
        self._write_env_file(with_tools=cluster)

    def down(self, *, purge: bool = False, log: Callable[[str], None] = print) -> None:
        """Stop every process by its PID file, remove the node's containers, mounts and
        network, then anything that still carries our marker."""
        for name, process in self.demo_processes().items():
            log(f"stopping the demo's {name} (pid {process.pid()})")
            process.stop()
        self.temporal.down(log)
        self.prometheus.down(log)
        if self.network is not None:  # whatever state it is in: a crashed node too
            RealNode(self.node_dir, self.network).down(log)
        stop_cluster(self.state_dir / "cluster", log)
        for pid in kill_leftovers(self.state_dir):
            log(f"killed leftover process {pid}")
        (self.node_dir / "unavailable").unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            log(f"removed {self.state_dir}")

    def images(
        self,
        names: Iterable[ProjectImage] = ("operator", "workers"),
        log: Callable[[str], None] = print,
    ) -> dict[str, BuiltImage]:
        """Build (or find) the project's images, keep them in the node image seed, and load
        them into this platform's node if it runs."""
        store = ImageStore(log=log)
        built: dict[str, BuiltImage] = {name: store.project(name) for name in names}
        NodeImageSeed(store.cache, log).ensure(list(built.values()))
        node = self.node
        if node is not None and node.processes["containerd"].is_running():
            for image in built.values():
                if node.load(image):
                    log(f"node: imported {image.ref}")
        return built

    def _claim_network(self, log: Callable[[str], None]) -> None:
        if self.network and self.network.exists():
            return
        reason = node_support.unsupported_reason()
        if reason is None:
            try:
                self.network = claim_network(self.node_dir)
            except NetworkError as err:
                reason = str(err)
        if reason is not None:
            self._no_node(reason, log)

    def _node_up(self, log: Callable[[str], None]) -> None:
        network = self.node_network
        if network is None:
            return
        node = RealNode(self.node_dir, network, self.cluster)
        try:
            store = ImageStore(log=log)
            pause = store.pause(self.cluster.tools.binary("pause"))
            node.up(pause, NodeImageSeed(store.cache, log), log)
        except Exception as err:  # never a half-started node
            node.down(log, keep_network=True)
            self._no_node(f"the real node failed to start: {err}", log)
            return
        (self.node_dir / "unavailable").unlink(missing_ok=True)

    def _no_node(self, reason: str, log: Callable[[str], None]) -> None:
        """One line of why; what else the failure said (a log's tail) follows, indented."""
        first, *details = reason.splitlines()
        self.node_dir.mkdir(parents=True, exist_ok=True)
        (self.node_dir / "unavailable").write_text(first + "\n")
        log(f"real node: none ({first}); pods run on kwok nodes only")
        for line in details:
            log(f"    {line}")

    def _write_env_file(self, *, with_tools: bool) -> None:
        lines = [f"export {key}={value}" for key, value in self.env().items()]
        if with_tools:
            # The v1.33 kubectl and helm we built, ahead of whatever the machine has.
            tools = self.cluster.tools
            lines.append(f'export PATH="{tools.kubernetes}:{tools.helm}:$PATH"')
        self.env_file.write_text("\n".join(lines) + "\n")

    def processes(self) -> dict[str, ManagedProcess]:
        """Every process this platform runs when up, by name, without building anything:
        Temporal's relay only where it has a node network, the node's where it also runs."""
        processes = cluster_processes(self.state_dir / "cluster")
        processes["temporal"] = self.temporal.process
        if self.prometheus.process.pid_file.exists():  # started by `up` (where installed)
            processes["prometheus"] = self.prometheus.process
        if self.node_network is not None:
            processes["temporal-relay"] = self.temporal.relay
            if self.no_node_reason is None:  # a node that failed to start runs nothing
                processes |= node_processes(self.node_dir)
        return processes

    def demo_processes(self) -> dict[str, ManagedProcess]:
        """The operator and host worker `make demo` started (and left running, so that the
        user can go on applying experiments), those that run."""
        state = self.state_dir / "demo"
        found = {name: ManagedProcess(name, state) for name in DEMO_PROCESSES}
        return {name: process for name, process in found.items() if process.is_running()}

    def leftovers(self) -> list[str]:
        """What a stopped platform must not have left: processes, mounts, network."""
        left = [f"process {pid}" for pid in leftovers(self.state_dir)]
        if self.network is not None:
            left += RealNode(self.node_dir, self.network).leftovers()
        return left

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if (self.state_dir / "cluster" / "kubeconfig").exists():
            kubeconfig = str(self.state_dir / "cluster" / "kubeconfig")
            env |= {"KUBECONFIG": kubeconfig, "TEMPOTRAIN_KUBECONFIG": kubeconfig}
        if self.prometheus.process.is_running():
            env["TEMPOTRAIN_PROMETHEUS_URL"] = self.prometheus.url
        if self.temporal.process.is_running():
            env |= {
                "TEMPORAL_ADDRESS": self.temporal.address,
                "TEMPOTRAIN_TEMPORAL_ADDRESS": self.temporal.address,
            }
        return env
