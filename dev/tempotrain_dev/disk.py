"""Free disk checked before the steps that need gigabytes of it, so that a full disk is one
clear sentence up front, not `no space left on device` from deep inside containerd halfway
through an import that then has to start over."""

from __future__ import annotations

import shutil
from pathlib import Path

GB = 1_000_000_000


class NotEnoughDisk(RuntimeError):
    pass


def require_free(path: Path, needed: int, what: str) -> None:
    """Raise unless the filesystem holding ``path`` (or its nearest existing parent) has
    ``needed`` bytes free."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise NotEnoughDisk(
            f"{what} needs {needed / GB:.1f} GB free on the filesystem of {path}, and "
            f"{free / GB:.1f} GB is. Free some: stopped platforms' state dirs "
            "(`python -m tempotrain_dev --state-dir DIR down --purge`), old pytest base "
            "temps, or point TEMPOTRAIN_CACHE at a roomier disk."
        )
