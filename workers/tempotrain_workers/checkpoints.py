"""Checkpoints that can be trusted (DESIGN.md §4).

A checkpoint directory counts only once its marker, written LAST and atomically, lists every
file with its size and sha256, the step/epoch/loss, and the dataset snapshot hash. Resume
takes the newest checkpoint whose marker verifies and whose snapshot hash matches; a torn
save (killed mid-write, or a file changed since) falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from tempotrain_workers.api import CheckpointInfo

MARKER_FILE = "tempotrain-checkpoint.json"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(
    checkpoint_dir: Path, *, step: int, epoch: float, loss: float | None, snapshot_hash: str
) -> CheckpointInfo:
    """The marker, once every file it lists is on stable storage (fsynced, directories too):
    it must never describe bytes that a power cut can still take back."""
    files: dict[str, dict[str, object]] = {}
    directories = {checkpoint_dir}
    for p in sorted(checkpoint_dir.rglob("*")):
        if p.is_file() and p.name != MARKER_FILE and not p.name.startswith("."):
            fsync_path(p)
            directories.add(p.parent)
            files[str(p.relative_to(checkpoint_dir))] = {
                "size": p.stat().st_size,
                "sha256": file_digest(p),
            }
    for directory in directories:
        fsync_path(directory)
    info = CheckpointInfo(
        step=step,
        epoch=epoch,
        loss=loss,
        path=str(checkpoint_dir),
        snapshot_hash=snapshot_hash,
        saved_at=datetime.now(UTC),
    )
    marker = json.loads(info.model_dump_json()) | {"files": files}
    staging = checkpoint_dir / f".{MARKER_FILE}.tmp"
    with staging.open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    staging.rename(checkpoint_dir / MARKER_FILE)
    fsync_path(checkpoint_dir)  # the rename itself
    return info


def marker_bytes(checkpoint_dir: Path) -> int:
    """The checkpoint's size as its marker lists it: its files, the marker aside."""
    marker = json.loads((checkpoint_dir / MARKER_FILE).read_text())
    return sum(int(entry["size"]) for entry in marker["files"].values())


def verify(checkpoint_dir: Path, snapshot_hash: str | None = None) -> CheckpointInfo | None:
    """The checkpoint's info if its marker verifies (and matches snapshot_hash), else None."""
    try:
        marker = json.loads((checkpoint_dir / MARKER_FILE).read_text())
        files: dict[str, dict[str, object]] = marker.pop("files")
        info = CheckpointInfo.model_validate(marker | {"path": str(checkpoint_dir)})
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
        return None
    if snapshot_hash is not None and info.snapshot_hash != snapshot_hash:
        return None
    for name, expected in files.items():
        path = checkpoint_dir / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return None
        if file_digest(path) != expected["sha256"]:
            return None
    return info


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """checkpoint-<step> directories, newest (highest step) first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_verified(run_dir: Path, snapshot_hash: str) -> CheckpointInfo | None:
    for candidate in checkpoint_dirs(run_dir):
        info = verify(candidate, snapshot_hash)
        if info is not None:
            return info
    return None
