"""The whole local platform: the Kubernetes control plane plus the Temporal dev server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from tempotrain_dev.cluster import LocalCluster, cluster_processes, stop_cluster
from tempotrain_dev.processes import ManagedProcess, kill_leftovers, leftovers
from tempotrain_dev.temporal_server import LocalTemporal
from tempotrain_dev.tools import REPO_ROOT, ensure_tools


def default_state_dir() -> Path:
    return Path(os.environ.get("TEMPOTRAIN_STATE_DIR", REPO_ROOT / ".tempotrain" / "platform"))


class Platform:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.temporal = LocalTemporal(self.state_dir / "temporal")

    @cached_property
    def cluster(self) -> LocalCluster:
        # Built lazily: finding the tools may mean building them, which Temporal does not need.
        return LocalCluster(self.state_dir / "cluster", ensure_tools())

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    def up(
        self, *, cluster: bool = True, temporal: bool = True, log: Callable[[str], None] = print
    ) -> None:
        if cluster:
            self.cluster.up(log)
        if temporal:
            self.temporal.up(log)
        self._write_env_file(with_tools=cluster)

    def down(self, *, purge: bool = False, log: Callable[[str], None] = print) -> None:
        """Stop every process by its PID file, then anything that still carries our marker."""
        self.temporal.down(log)
        stop_cluster(self.state_dir / "cluster", log)
        for pid in kill_leftovers(self.state_dir):
            log(f"killed leftover process {pid}")
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            log(f"removed {self.state_dir}")

    def _write_env_file(self, *, with_tools: bool) -> None:
        lines = [f"export {key}={value}" for key, value in self.env().items()]
        if with_tools:
            # The v1.33 kubectl and helm we built, ahead of whatever the machine has.
            tools = self.cluster.tools
            lines.append(f'export PATH="{tools.kubernetes}:{tools.helm}:$PATH"')
        self.env_file.write_text("\n".join(lines) + "\n")

    def processes(self) -> dict[str, ManagedProcess]:
        """Every platform process by name, without building anything."""
        return cluster_processes(self.state_dir / "cluster") | {"temporal": self.temporal.process}

    def leftovers(self) -> list[int]:
        return leftovers(self.state_dir)

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if (self.state_dir / "cluster" / "kubeconfig").exists():
            kubeconfig = str(self.state_dir / "cluster" / "kubeconfig")
            env |= {"KUBECONFIG": kubeconfig, "TEMPOTRAIN_KUBECONFIG": kubeconfig}
        if self.temporal.process.is_running():
            env |= {
                "TEMPORAL_ADDRESS": self.temporal.address,
                "TEMPOTRAIN_TEMPORAL_ADDRESS": self.temporal.address,
            }
        return env
