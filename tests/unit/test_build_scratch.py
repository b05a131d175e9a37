"""buildah's scratch space: a killed build's temporary files (gigabytes) do not outlive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tempotrain_dev.images import remove_orphaned_scratch


def _ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_of_ended_processes_go_and_a_living_ones_stays(tmp_path: Path) -> None:
    living = tmp_path / str(os.getpid())
    ended = tmp_path / str(_ended_pid())
    for folder in (living, ended):
        folder.mkdir()
        (folder / "layer.tar").write_bytes(b"x" * 1024)
    stray = tmp_path / "1531334811.tmp"
    stray.write_bytes(b"leftover")

    remove_orphaned_scratch(tmp_path)

    assert (living / "layer.tar").exists()
    assert not ended.exists()
    assert not stray.exists()


def test_a_missing_scratch_root_is_nothing_to_do(tmp_path: Path) -> None:
    remove_orphaned_scratch(tmp_path / "never-made")
