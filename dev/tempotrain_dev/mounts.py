"""Mounts under a directory, read from /proc/self/mountinfo, and their removal: what the
kubelet, containerd and debootstrap mount must not outlive the platform that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


def below(root: Path) -> list[Path]:
    """Mount points at or under ``root``, deepest first (the order to unmount them in)."""
    root = root.resolve()
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = {Path(_unescape(line.split()[4])) for line in lines if len(line.split()) > 4}
    inside = [p for p in found if p == root or root in p.parents]
    return sorted(inside, key=lambda p: len(p.parts), reverse=True)


def unmount_below(root: Path) -> None:
    """Detach every mount at or under ``root`` (lazily: a busy one goes once it is unused)."""
    for mount_point in below(root):
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )
