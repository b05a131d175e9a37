"""ManagedProcess: PID files are trusted only for our own live processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tempotrain_dev.processes import ManagedProcess, leftovers
from tempotrain_dev.waiting import wait_for


def test_start_is_idempotent_and_stop_kills_the_whole_group(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", tmp_path)
    # The shell's child `sleep` shares the process group and inherits the marker.
    pid = process.start(["bash", "-c", "sleep 300 & wait"])
    assert process.start(["bash", "-c", "sleep 300 & wait"]) == pid
    assert process.pid() == pid

    assert pid in leftovers(tmp_path)
    process.stop(timeout=5)
    assert process.pid() is None
    assert not process.pid_file.exists()
    assert leftovers(tmp_path) == []


def test_a_recorded_pid_of_a_foreign_process_is_not_trusted(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        process = ManagedProcess("impostor", tmp_path)
        process.pid_file.parent.mkdir(parents=True)
        process.pid_file.write_text(f"{stranger.pid}\n")
        assert process.pid() is None
        process.stop()  # must not kill the stranger
        assert stranger.poll() is None
        os.kill(stranger.pid, 0)
    finally:
        stranger.kill()
        stranger.wait()


def test_exited_process_reports_its_log_tail(tmp_path: Path) -> None:
    process = ManagedProcess("crasher", tmp_path)
    process.start(["bash", "-c", "echo 'bad flag --frobnicate'; exit 3"])
    wait_for(lambda: not process.is_running(), timeout=10, what="crasher to exit")
    assert "bad flag --frobnicate" in (process.exited_early() or "")
