"""Can this machine run a real node? What is missing is installed from Debian's packages
when we may (root); what cannot be had is one line of reason, and the platform runs with kwok
nodes only: never a half-started node."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# command (or file) → the Debian package that brings it
PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "socat": "socat",  # Temporal's relay onto the node network
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/cni/host-local": "containernetworking-plugins",
    "/usr/lib/cni/loopback": "containernetworking-plugins",
    "/usr/lib/cni/portmap": "containernetworking-plugins",
}
SWITCH = "TEMPOTRAIN_REAL_NODE"  # 0: kwok nodes only, on purpose


def unsupported_reason(install: bool = True) -> str | None:
    """Why this machine cannot run a real node, in one line; None when it can. With
    ``install``, missing Debian packages are installed first."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"{SWITCH}=0"
    if os.geteuid() != 0:
        return "not root: containerd, a kubelet and a network namespace need root"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "no overlayfs in this kernel (containerd's snapshotter needs it)"
    if not Path("/sys/fs/cgroup/memory").is_dir():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory (the node expects v1)"
    missing = missing_packages()
    if missing and install:
        error = apt_install(missing, "real node")
        if error:
            return f"installing {', '.join(missing)} failed: {error}"
        missing = missing_packages()
    if missing:
        return f"missing Debian packages: {', '.join(missing)}"
    return None


def missing_packages() -> list[str]:
    missing = {
        package
        for need, package in PACKAGES.items()
        if not (Path(need).exists() if need.startswith("/") else shutil.which(need))
    }
    return sorted(missing)


def apt_install(packages: list[str], purpose: str) -> str | None:
    """Install Debian packages (apt-get update once if the first try fails); the error's
    last line, or None."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"{purpose}: installing Debian packages {' '.join(packages)}", flush=True)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    for argv in (install, ["apt-get", "update", "-qq"], install):
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        if result.returncode == 0 and argv is install:
            return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"
