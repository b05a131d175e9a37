"""The README's path for a new user: on the running platform, `tempotrain_dev workspace`
prepares a namespace and prints the commands of an operator and a worker of one's own; run
exactly as printed, they take the local example to Succeeded."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.platform import Platform
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.workspace import prepare_workspace

from tests.conftest import ClusterHandle
from tests.e2e.conftest import experiment_status
from tests.support import eventually

pytestmark = pytest.mark.kube


@pytest.fixture
def platform(
    request: pytest.FixtureRequest, cluster: ClusterHandle, temporal_address: str
) -> Platform:
    if os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip("the workspace command is for the local platform (this run uses another)")
    own: Platform = request.getfixturevalue("own_platform")
    return own


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _run_as_printed(source: str, command: str, log: Path) -> subprocess.Popen[bytes]:
    """In a shell at the repository root, as a user pastes it."""
    return subprocess.Popen(
        ["bash", "-c", f"{source} && exec {command}"],
        cwd=REPO_ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


async def test_the_printed_commands_run_the_local_example_to_succeeded(
    platform: Platform,
    cluster: ClusterHandle,
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    namespace = f"mine-{os.getpid()}"
    lines = prepare_workspace(platform, namespace, tmp_path / "runs")
    try:
        source = next(line for line in lines if line.startswith("source "))
        commands = [line for line in lines if line.startswith(".venv/bin/python ")]
        assert [c.split()[2] for c in commands] == ["tempotrain_operator", "tempotrain_workers"]
        for index, command in enumerate(commands):
            started.append(_run_as_printed(source, command, tmp_path / f"process-{index}.log"))
        applied = next(line for line in lines if line.startswith("kubectl apply"))
        cluster.kubectl(*applied.split()[1:])

        async def finished() -> dict[str, Any] | None:
            status = experiment_status(cluster, namespace, "sentiment-minilm")
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = await eventually(finished, within=480, what="the example to finish")
        logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("process-*.log"))
        assert status["phase"] == "Succeeded", (status, logs)
        assert status["metrics"]["evalAccuracy"] is not None
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
