"""`up` is idempotent, `down` leaves no process, mount or network behind (a second platform
with a real node runs beside the session's), and a second build is all cache hits."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import leftovers
from tempotrain_dev.tools import BUILD_SCRIPT, Tools


def _cli(state_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tempotrain_dev", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _pids(state_dir: Path) -> dict[str, int | None]:
    return {name: p.pid() for name, p in Platform(state_dir).processes().items()}


def test_up_twice_is_a_no_op_and_down_stops_everything(short_dir: Path) -> None:
    state = short_dir / "platform"
    try:
        first = _cli(state, "up")
        assert first.returncode == 0, first.stderr
        pids = _pids(state)
        assert all(pids.values()), (pids, first.stdout)
        assert (state / "env.sh").read_text().count("export") >= 4
        if os.environ.get("TEMPOTRAIN_REQUIRE_REAL_NODE") == "1":
            # Its own real node, beside the session's.
            assert Platform(state).node is not None, Platform(state).no_node_reason

        second = _cli(state, "up")
        assert second.returncode == 0, second.stderr
        assert "cluster: already up" in second.stdout
        assert "temporal: already up" in second.stdout
        assert _pids(state) == pids

        down = _cli(state, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(_pids(state).values())
        assert leftovers(state.resolve()) == []
        assert Platform(state).leftovers() == []  # mounts and network too
    finally:
        _cli(state, "down")


def test_without_a_real_node_up_says_why_in_one_line_and_runs_on_kwok_nodes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "kwok-only"
    try:
        up = _cli(state, "up", TEMPOTRAIN_REAL_NODE="0")
        assert up.returncode == 0, up.stderr
        said = [line for line in up.stdout.splitlines() if line.startswith("real node:")]
        assert said == ["real node: none (TEMPOTRAIN_REAL_NODE=0); pods run on kwok nodes only"]
        platform = Platform(state)
        assert platform.node is None
        nodes = json.loads(platform.cluster.kubectl("get", "nodes", "-o", "json"))["items"]
        assert all(n["metadata"]["name"].startswith("kwok-") for n in nodes)
        status = _cli(state, "status")
        assert status.returncode == 0, status.stdout  # everything it runs is running
        assert "real node: none (TEMPOTRAIN_REAL_NODE=0)" in status.stdout
    finally:
        _cli(state, "down")
    assert Platform(state).leftovers() == []


def test_second_tool_build_is_all_cache_hits() -> None:
    # The session already built (or found) every tool, so nothing may be rebuilt now.
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[build-tools]")]
    assert len(lines) == len(dataclasses.fields(Tools)), result.stderr  # one line per tool
    assert all("cache hit" in line for line in lines), result.stderr
