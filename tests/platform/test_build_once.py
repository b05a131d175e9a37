"""dev/build-once.sh, the cache step of dev/build-tools.sh: two runs on one machine never break
each other's build, a build in progress says so, and a failed step fails the build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for

LIBRARY = REPO_ROOT / "dev" / "build-once.sh"
# Builders: the work of a real build stands in for a Go build (sleep is that work here).
BUILDERS = """
slow_build() { echo built >> "$COUNT"; sleep 2; echo binary > "$1/tool"; }
broken_build() { false; echo binary > "$1/tool"; }
"""


def _build(dest: Path, builder: str, **env: str) -> subprocess.Popen[str]:
    script = (
        f'set -euo pipefail; source "{LIBRARY}"; {BUILDERS}\n'
        f'build_once tool "{dest}" tool {builder}'
    )
    return subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_two_runs_at_once_build_once_and_both_get_the_tool(tmp_path: Path) -> None:
    dest, count = tmp_path / "bin" / "tool-1", tmp_path / "count"
    first = _build(dest, "slow_build", COUNT=str(count))
    wait_for(lambda: count.exists(), timeout=30, what="the first build to start")
    second = _build(dest, "slow_build", COUNT=str(count))
    outputs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert [out for out, _ in outputs] == [f"tool={dest}\n"] * 2
    assert count.read_text().splitlines() == ["built"]  # the second waited, then reused it
    assert "another run is building it" in outputs[1][1]
    assert (dest / "tool").read_text() == "binary\n"
    assert not list(dest.parent.glob("*.tmp.*"))


def test_a_long_build_says_it_is_still_building(tmp_path: Path) -> None:
    build = _build(
        tmp_path / "tool-1", "slow_build", COUNT=str(tmp_path / "c"),
        TEMPOTRAIN_BUILD_PROGRESS_SECONDS="1",
    )  # fmt: skip
    _, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert err.count("tool: still building") >= 1, err


def test_only_a_dead_builds_temp_dir_is_removed(tmp_path: Path) -> None:
    dest = tmp_path / "tool-1"
    dead_dir = tmp_path / "tool-1.tmp.999999999"  # above pid_max: no such process
    live_dir = tmp_path / f"tool-1.tmp.{os.getpid()}"  # this test: alive
    for folder in (dead_dir, live_dir):
        folder.mkdir()
    build = _build(dest, "slow_build", COUNT=str(tmp_path / "c"))
    _, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert not dead_dir.exists() and live_dir.exists()


def test_a_step_that_fails_inside_a_builder_fails_the_build_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "tool-1"
    build = _build(dest, "broken_build")
    out, err = build.communicate(timeout=60)
    assert build.returncode != 0 and out == "", (out, err)
    assert "tool: failed" in err
    assert not dest.exists() and not list(tmp_path.glob("*.tmp.*"))
