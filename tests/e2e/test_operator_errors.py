"""Bad input and a missing Temporal become conditions with reasons, never crash loops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    experiment_status,
    kube_json,
)
from tests.e2e.test_cifar10_scaling import scaling
from tests.support import eventually

pytestmark = pytest.mark.kube


async def test_semantically_invalid_spec_fails_with_invalid_spec_and_starts_nothing(
    cluster: ClusterHandle, stack: Stack, temporal: TemporalHandle, minilm_path: Path
) -> None:
    ns = stack.namespace
    bad = experiment(
        "not-ours",
        stack.model(minilm_path),
        storage={"runs": {"existingClaim": "shared-runs", "reclaimPolicy": "Delete"}},
    )
    apply(cluster, ns, bad)

    async def failed() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "not-ours")
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, within=60, what="phase Failed")
    condition = conditions_by_type(status)["SpecValid"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "existingClaim 'shared-runs'" in condition["message"]
    assert "workflowId" not in status
    assert not kube_json(cluster, ns, "deploy")["items"]
    workflows = [
        w
        async for w in temporal.client.list_workflows(
            f"WorkflowId STARTS_WITH 'bertexperiment-{ns}-not-ours'"
        )
    ]
    assert workflows == []

    # Still healthy: the next, valid experiment is reconciled as usual.
    apply(cluster, ns, experiment("fine", stack.model(minilm_path)))

    async def started() -> bool:
        started = conditions_by_type(experiment_status(cluster, ns, "fine")).get(
            "WorkflowStarted", {}
        )
        return started.get("status") == "True"

    await eventually(started, within=60, what="the valid experiment's WorkflowStarted")
    assert stack.alive("operator")


async def test_unreachable_temporal_is_a_condition_and_a_retry_not_a_crash(
    cluster: ClusterHandle, stack: Stack, minilm_path: Path
) -> None:
    ns = stack.namespace
    stack.kill("operator")
    stack.start_operator(temporal_address="127.0.0.1:1")
    apply(cluster, ns, experiment("waiting", stack.model(minilm_path)))

    async def unavailable() -> dict[str, Any] | None:
        condition = conditions_by_type(experiment_status(cluster, ns, "waiting")).get(
            "WorkflowStarted"
        )
        return condition if condition and condition["reason"] == "TemporalUnavailable" else None

    condition = await eventually(unavailable, within=60, what="a TemporalUnavailable condition")
    assert condition["status"] == "False"
    assert stack.alive("operator")

    # Temporal "comes back" (an operator pointed at the real server): the same CR proceeds.
    stack.kill("operator")
    stack.start_operator()

    async def recovered() -> bool:
        started = conditions_by_type(experiment_status(cluster, ns, "waiting")).get(
            "WorkflowStarted", {}
        )
        return started.get("status") == "True"

    await eventually(recovered, within=60, what="WorkflowStarted once Temporal is reachable")


async def test_a_failed_run_says_why_and_once_fixed_is_retried_in_place(
    cluster: ClusterHandle, stack: Stack, minilm_path: Path
) -> None:
    ns = stack.namespace
    apply(cluster, ns, experiment("no-model", "models/not-there"))

    async def failed() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "no-model")
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, within=120, what="phase Failed")
    assert status["message"].startswith("ModelNotFound: "), status["message"]
    assert "attempts" in status and status["attempts"] == 1  # bad input: never retried

    async def warned() -> list[dict[str, Any]] | None:
        selector = "involvedObject.name=no-model,type=Warning,reason=ModelNotFound"
        found = cluster.kubectl("get", "events", "-n", ns, f"--field-selector={selector}", "-ojson")
        events: list[dict[str, Any]] = json.loads(found)["items"]
        return events or None

    events = await eventually(warned, within=30, what="a ModelNotFound Warning event")
    assert "not-there" in events[0]["message"], events[0]

    # The fix, then a retry of the same object: no delete, no re-apply.
    shutil.copytree(minilm_path, stack.snapshots / "models" / "not-there")
    retry = json.dumps({"spec": {"retryGeneration": 1}})
    cluster.kubectl("patch", "bexp", "no-model", "-n", ns, "--type=merge", "-p", retry)

    async def running_again() -> bool:
        return experiment_status(cluster, ns, "no-model").get("phase") != "Failed"

    await eventually(running_again, within=60, what="the retry to take the run out of Failed")

    async def succeeded() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "no-model")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = await eventually(succeeded, within=240, what="the retried run to finish")
    assert status["phase"] == "Succeeded", (status, stack.log("operator"))
    conditions = conditions_by_type(status)
    assert conditions["Completed"]["reason"] == "Succeeded", conditions
    assert "message" not in status or not status["message"].startswith("ModelNotFound")


async def test_two_kinds_with_one_name_never_share_children(
    cluster: ClusterHandle, stack: Stack, minilm_path: Path
) -> None:
    ns = stack.namespace
    apply(cluster, ns, experiment("twin", stack.model(minilm_path)))

    async def started() -> bool:
        status = experiment_status(cluster, ns, "twin")
        return conditions_by_type(status).get("WorkflowStarted", {}).get("status") == "True"

    await eventually(started, within=60, what="the BertExperiment's WorkflowStarted")
    apply(cluster, ns, scaling("twin"))

    async def refused() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "twin", kind="cifar10scalings")
        return status if status.get("phase") == "Failed" else None

    status = await eventually(refused, within=60, what="the Cifar10Scaling refused")
    condition = conditions_by_type(status)["SpecValid"]
    assert condition["reason"] == "NameConflict", condition
    assert "twin-snapshots" in condition["message"] and "BertExperiment" in condition["message"]
    # Nothing of its own was made: no Ray driver, no RayCluster.
    assert not kube_json(cluster, ns, "rayclusters.ray.io")["items"]
    names = {d["metadata"]["name"] for d in kube_json(cluster, ns, "deployments")["items"]}
    assert names == {"twin-training", "twin-eval"}, names
