"""Prometheus (Debian's `prometheus` package) on loopback, scraping what its targets folder
lists: file-based discovery, so the demo's operator and worker, or a test's, add themselves
(`add_targets`) without a restart, and are scraped within seconds."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempotrain_dev.net import free_ports
from tempotrain_dev.node_support import apt_install
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.waiting import wait_for

PACKAGE = "prometheus"
# Often, so that a test sees a value seconds after a process reported it.
SCRAPE_SECONDS = 2


def prometheus_binary(install: bool = True) -> Path | None:
    """The binary, installed from Debian's packages where missing and allowed (root)."""
    found = shutil.which("prometheus")
    if found is None and install and os.geteuid() == 0:
        apt_install([PACKAGE], "prometheus")
        found = shutil.which("prometheus")
    return Path(found) if found else None


class LocalPrometheus:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process = ManagedProcess("prometheus", state_dir)
        self.targets_dir = state_dir / "targets"
        self._port_file = state_dir / "port"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port_file.read_text().strip()}"

    def is_up(self) -> bool:
        return self.process.is_running() and self._ready()

    def up(self, log: Callable[[str], None] = print) -> bool:
        """Start it (False, said in one line, where there is no Prometheus to start)."""
        if self.is_up():
            log(f"prometheus: already up at {self.url}")
            return True
        binary = prometheus_binary()
        if binary is None:
            log(f"prometheus: not started (no `prometheus`; Debian: apt-get install {PACKAGE})")
            return False
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        if not self.process.is_running():
            (port,) = free_ports(1)
            self._port_file.write_text(f"{port}\n")
            config = self.state_dir / "prometheus.yml"
            config.write_text(json.dumps(self._config()))  # YAML reads JSON
            self.process.start(
                [
                    str(binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.state_dir / 'data'}",
                    "--storage.tsdb.retention.time=2d",
                    f"--web.listen-address=127.0.0.1:{port}",
                ]
            )
        wait_for(
            self._ready,
            timeout=60,
            what="Prometheus to be ready",
            detail=lambda: self.process.exited_early() or f"log: {self.process.log_file}",
        )
        log(f"prometheus: serving at {self.url}")
        return True

    def down(self, log: Callable[[str], None] = print) -> None:
        if self.process.is_running():
            log("prometheus: stopping")
        self.process.stop()

    def _config(self) -> dict[str, Any]:
        seconds = f"{SCRAPE_SECONDS}s"
        return {
            "global": {"scrape_interval": seconds, "evaluation_interval": seconds},
            "scrape_configs": [
                {
                    "job_name": "tempotrain",
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": seconds}
                    ],
                }
            ],
        }

    def add_targets(self, name: str, addresses: list[str], labels: dict[str, str]) -> None:
        """Scrape `addresses` (host:port) with these labels, until `remove_targets(name)`."""
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        staging = self.targets_dir / f".{name}.json.tmp"
        staging.write_text(json.dumps([{"targets": addresses, "labels": labels}]))
        staging.rename(self.targets_dir / f"{name}.json")  # whole, never half-written

    def remove_targets(self, name: str) -> None:
        (self.targets_dir / f"{name}.json").unlink(missing_ok=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {...}, "value": [time, "v"]}]."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{promql}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, ValueError):
            return False
