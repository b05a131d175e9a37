"""Checkpoint markers: written last, verified by size and sha256, bound to a snapshot hash."""

from __future__ import annotations

from pathlib import Path

from tempotrain_workers.checkpoints import MARKER_FILE, latest_verified, verify, write_marker


def _checkpoint(run_dir: Path, step: int, snapshot_hash: str = "h1", marker: bool = True) -> Path:
    directory = run_dir / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(bytes([step % 256]) * 1000)
    (directory / "optimizer.pt").write_bytes(b"opt" * step)
    if marker:
        write_marker(
            directory, step=step, epoch=step / 10, loss=1.0 / step, snapshot_hash=snapshot_hash
        )
    return directory


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step)
    info = latest_verified(tmp_path, "h1")
    assert info is not None and info.step == 30 and info.path.endswith("checkpoint-30")


def test_torn_checkpoint_without_marker_falls_back_to_previous(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, marker=False)  # killed before the marker was written
    info = latest_verified(tmp_path, "h1")
    assert info is not None and info.step == 20


def test_checkpoint_whose_file_changed_is_rejected(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10)
    newest = _checkpoint(tmp_path, 20)
    with (newest / "model.safetensors").open("r+b") as f:  # same size, different bytes
        f.write(b"\xff")
    assert verify(newest) is None
    assert latest_verified(tmp_path, "h1").step == 10  # type: ignore[union-attr]

    (tmp_path / "checkpoint-10" / "optimizer.pt").write_bytes(b"truncated")
    assert latest_verified(tmp_path, "h1") is None


def test_checkpoint_of_another_snapshot_is_never_resumed(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10, snapshot_hash="h1")
    _checkpoint(tmp_path, 20, snapshot_hash="h2")
    assert latest_verified(tmp_path, "h1").step == 10  # type: ignore[union-attr]
    assert latest_verified(tmp_path, "h2").step == 20  # type: ignore[union-attr]
    assert latest_verified(tmp_path, "h3") is None


def test_garbled_marker_is_rejected(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, 10)
    (directory / MARKER_FILE).write_text("{not json")
    assert verify(directory) is None
    assert latest_verified(tmp_path / "missing", "h1") is None
