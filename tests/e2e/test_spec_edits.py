"""Spec edits on a live experiment: what defines the run is refused at apply (CEL transition
rules, every kind); where and how it runs is rolled out to its worker Deployments and
`.status.observedGeneration` follows; an edit the operator refuses changes nothing and says
so. No worker runs here: the experiments stay Pending, their Deployments are what counts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tempotrain_operator.children import TEMPLATE_HASH

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, apply, conditions_by_type, experiment, kube_json
from tests.e2e.test_batch_inference import batch_inference
from tests.e2e.test_cifar10_scaling import scaling
from tests.support import eventually

pytestmark = pytest.mark.kube


def _patch(cluster: ClusterHandle, ns: str, kind: str, name: str, spec: dict[str, Any]) -> Any:
    body = json.dumps({"spec": spec})
    return cluster.kubectl.run("patch", kind, name, "-n", ns, "--type=merge", "-p", body)


def _object(cluster: ClusterHandle, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(kube_json(cluster, ns, kind, name))


async def _observed(cluster: ClusterHandle, ns: str, kind: str, name: str) -> dict[str, Any]:
    """The object once its status has seen its current generation."""

    async def seen() -> dict[str, Any] | None:
        obj = _object(cluster, ns, kind, name)
        generation = obj["metadata"]["generation"]
        return obj if (obj.get("status") or {}).get("observedGeneration") == generation else None

    return await eventually(seen, within=60, what=f"{kind} {name} observedGeneration")


async def test_resources_and_images_roll_out_and_the_run_itself_cannot_change(
    cluster: ClusterHandle, operator_only: Stack
) -> None:
    ns = operator_only.namespace
    apply(cluster, ns, experiment("edited", "models/minilm"))
    await _observed(cluster, ns, "bexp", "edited")
    before = _object(cluster, ns, "deploy", "edited-training")

    # Refused at apply, with the field and why.
    refused = _patch(cluster, ns, "bexp", "edited", {"model": {"name": "bert-large-uncased"}})
    assert refused.returncode != 0
    assert "spec.model cannot change once the experiment exists" in refused.stderr

    # Rolled out: the training pod template gets the new CPU, the generation is observed.
    assert _patch(cluster, ns, "bexp", "edited", {"resources": {"cpu": "3"}}).returncode == 0
    bexp = await _observed(cluster, ns, "bexp", "edited")
    after = _object(cluster, ns, "deploy", "edited-training")
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "3"
    hashes = [d["metadata"]["annotations"][TEMPLATE_HASH] for d in (before, after)]
    assert hashes[0] != hashes[1]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert conditions_by_type(bexp["status"])["SpecValid"]["status"] == "True"
    events = kube_json(cluster, ns, "events")["items"]
    assert any(e["reason"] == "RolledOut" and "edited-training" in e["message"] for e in events)

    # An image the operator does not allow: nothing changes, SpecValid says why.
    spec = {"workers": {"image": "evil.example/miner:1"}}
    assert _patch(cluster, ns, "bexp", "edited", spec).returncode == 0

    async def refused_edit() -> dict[str, Any] | None:
        status = _object(cluster, ns, "bexp", "edited").get("status") or {}
        condition = conditions_by_type(status).get("SpecValid") or {}
        return condition if condition.get("reason") == "InvalidEdit" else None

    condition = await eventually(refused_edit, within=60, what="SpecValid InvalidEdit")
    assert "evil.example/miner:1" in condition["message"]
    unchanged = _object(cluster, ns, "deploy", "edited-training")
    assert unchanged["metadata"]["generation"] == after["metadata"]["generation"]
    assert _object(cluster, ns, "bexp", "edited")["status"].get("phase") == "Pending"

    # An allowed image: rolled out to both worker Deployments.
    spec = {"workers": {"image": "registry.example/ml/workers:2"}}
    assert _patch(cluster, ns, "bexp", "edited", spec).returncode == 0
    await _observed(cluster, ns, "bexp", "edited")
    for role in ("training", "eval"):
        deployment = _object(cluster, ns, "deploy", f"edited-{role}")
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "registry.example/ml/workers:2", role


async def test_inference_workers_scale_and_the_job_itself_cannot_change(
    cluster: ClusterHandle, operator_only: Stack
) -> None:
    ns = operator_only.namespace
    apply(cluster, ns, batch_inference("scored", model={"name": "models/minilm"}))
    await _observed(cluster, ns, "binf", "scored")
    refused = _patch(cluster, ns, "binf", "scored", {"chunkSize": 7})
    assert refused.returncode != 0 and "spec.chunkSize cannot change" in refused.stderr
    assert _patch(cluster, ns, "binf", "scored", {"workers": 3}).returncode == 0
    await _observed(cluster, ns, "binf", "scored")
    assert _object(cluster, ns, "deploy", "scored-inference")["spec"]["replicas"] == 3


async def test_a_scaling_run_keeps_its_scales_and_ray_cluster(
    cluster: ClusterHandle, operator_only: Stack
) -> None:
    ns = operator_only.namespace
    apply(cluster, ns, scaling("scaled"))
    for edit, field in (
        ({"scales": [{"workers": 4}]}, "spec.scales"),
        ({"ray": {"image": "registry.example/ml/ray:2"}}, "spec.ray"),
        ({"learningRate": 0.5}, "spec.learningRate"),
    ):
        refused = _patch(cluster, ns, "c10s", "scaled", edit)
        assert refused.returncode != 0, edit
        assert f"{field} cannot change once the experiment exists" in refused.stderr
    spec = {"workers": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}}
    assert _patch(cluster, ns, "c10s", "scaled", spec).returncode == 0

    async def rolled_out() -> bool:
        found = [
            d
            for d in kube_json(cluster, ns, "deploy")["items"]
            if d["metadata"]["name"] == "scaled-ray-driver"
        ]
        env = found[0]["spec"]["template"]["spec"]["containers"][0].get("env") if found else []
        return {"name": "NCCL_DEBUG", "value": "INFO"} in (env or [])

    await eventually(rolled_out, within=60, what="the driver's new env")
