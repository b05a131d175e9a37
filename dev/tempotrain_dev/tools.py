"""Where the Go-built binaries live: asks dev/build-tools.sh, which builds what is missing."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "dev" / "build-tools.sh"


@dataclass(frozen=True)
class Tools:
    kubernetes: Path  # kube-apiserver, -controller-manager, -scheduler, kubectl, kubelet, -proxy
    etcd: Path
    kwok: Path
    helm: Path
    kuberay: Path  # ray-operator
    kuberay_crds: Path
    coredns: Path
    pause: Path  # the real node's sandbox program
    kueue: Path
    kueue_crds: Path

    @property
    def kubectl(self) -> Path:
        return self.kubernetes / "kubectl"

    def binary(self, name: str) -> Path:
        for directory in (
            self.kubernetes,
            self.etcd,
            self.kwok,
            self.helm,
            self.kuberay,
            self.coredns,
            self.pause,
            self.kueue,
        ):
            if (directory / name).is_file():
                return directory / name
        raise FileNotFoundError(f"{name} is not among the built tools")


def ensure_tools() -> Tools:
    """Build (or find in the cache) every tool; raises with the build's output on failure."""
    if not BUILD_SCRIPT.is_file():
        raise RuntimeError(f"{BUILD_SCRIPT} not found: tempotrain_dev runs from a source checkout")
    with subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as build:
        # What is being built (and how long it took) is news, as it happens; a cache hit not.
        for line in build.stderr or ():
            if "cache hit" not in line:
                print(line, end="", file=sys.stderr, flush=True)
        stdout = build.stdout.read() if build.stdout else ""
    if build.returncode != 0:
        raise RuntimeError(f"building the local platform's tools failed (exit {build.returncode})")
    paths = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return Tools(**{key: Path(value) for key, value in paths.items()})
