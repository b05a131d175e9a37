"""Images built here: a build that fails shows the build's own error and tags nothing (so
nothing half-built reaches a node); the same inputs are not built twice. Needs root and
buildah (the real node's prerequisites); skipped with the reason elsewhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tempotrain_dev import node_support
from tempotrain_dev.images import BUILD_INPUTS, ImageBuildError, ImageStore, project_key
from tempotrain_dev.tools import REPO_ROOT


@pytest.fixture(scope="module")
def store() -> ImageStore:
    reason = node_support.unsupported_reason()
    if reason is not None:
        pytest.skip(f"no image builds here: {reason}")
    return ImageStore(log=lambda _: None)


def _context(target: Path) -> Path:
    for name in (*BUILD_INPUTS, "operator/Dockerfile", ".dockerignore"):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_a_failing_build_shows_its_own_error_and_tags_nothing(
    store: ImageStore, tmp_path: Path
) -> None:
    context = _context(tmp_path / "context")
    dockerfile = context / "operator" / "Dockerfile"
    failing_step = "RUN echo 'step that breaks: no such package frobnicate' && exit 7\n"
    broken = dockerfile.read_text().replace(
        "\nWORKDIR /opt/tempotrain", f"\n{failing_step}WORKDIR /opt/tempotrain"
    )
    assert broken != dockerfile.read_text()
    dockerfile.write_text(broken)

    with pytest.raises(ImageBuildError) as failure:
        store.project("operator", context)
    message = str(failure.value)
    assert "no such package frobnicate" in message  # the build's own output
    assert "exit 7" in message or "exit status 7" in message, message
    # Nothing half-built is left: no working container (nor its mount), and nothing tagged,
    # so no node can import an image of these inputs.
    assert store.buildah("containers", "--quiet").split() == []
    key = project_key(context, dockerfile, store.base().ref, store.wheelhouse().name)
    assert not store.exists(f"localhost/tempotrain/operator:{key}")


def test_the_same_inputs_are_not_built_twice(store: ImageStore) -> None:
    first = store.project("operator")
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tempotrain_dev.images import ImageStore; "
            "print(ImageStore(log=print).project('operator').ref)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == [first.ref]  # no "building" line: a cache hit
