"""Bad input and a missing Temporal become conditions with reasons, never crash loops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import Stack, apply, experiment
from tests.support import eventually

pytestmark = pytest.mark.kube


def _status(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    obj = json.loads(cluster.kubectl("get", "bexp", name, "-n", namespace, "-o", "json"))
    return dict(obj.get("status") or {})


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


async def test_semantically_invalid_spec_fails_with_invalid_spec_and_starts_nothing(
    cluster: ClusterHandle, stack: Stack, temporal: TemporalHandle, minilm_path: Path
) -> None:
    ns = stack.namespace
    bad = experiment(
        "not-ours",
        minilm_path,
        storage={"runs": {"existingClaim": "shared-runs", "reclaimPolicy": "Delete"}},
    )
    apply(cluster, ns, bad)

    async def failed() -> dict[str, Any] | None:
        status = _status(cluster, ns, "not-ours")
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, within=60, what="phase Failed")
    condition = _conditions(status)["SpecValid"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "existingClaim 'shared-runs'" in condition["message"]
    assert "workflowId" not in status
    assert not json.loads(cluster.kubectl("get", "deploy", "-n", ns, "-o", "json"))["items"]
    workflows = [
        w
        async for w in temporal.client.list_workflows(
            f"WorkflowId STARTS_WITH 'bertexperiment-{ns}-not-ours'"
        )
    ]
    assert workflows == []

    # Still healthy: the next, valid experiment is reconciled as usual.
    apply(cluster, ns, experiment("fine", minilm_path))

    async def started() -> bool:
        started = _conditions(_status(cluster, ns, "fine")).get("WorkflowStarted", {})
        return started.get("status") == "True"

    await eventually(started, within=60, what="the valid experiment's WorkflowStarted")
    assert stack.alive("operator")


async def test_unreachable_temporal_is_a_condition_and_a_retry_not_a_crash(
    cluster: ClusterHandle, stack: Stack, minilm_path: Path
) -> None:
    ns = stack.namespace
    stack.kill("operator")
    stack.start_operator(temporal_address="127.0.0.1:1")
    apply(cluster, ns, experiment("waiting", minilm_path))

    async def unavailable() -> dict[str, Any] | None:
        condition = _conditions(_status(cluster, ns, "waiting")).get("WorkflowStarted")
        return condition if condition and condition["reason"] == "TemporalUnavailable" else None

    condition = await eventually(unavailable, within=60, what="a TemporalUnavailable condition")
    assert condition["status"] == "False"
    assert stack.alive("operator")

    # Temporal "comes back" (an operator pointed at the real server): the same CR proceeds.
    stack.kill("operator")
    stack.start_operator()

    async def recovered() -> bool:
        started = _conditions(_status(cluster, ns, "waiting")).get("WorkflowStarted", {})
        return started.get("status") == "True"

    await eventually(recovered, within=60, what="WorkflowStarted once Temporal is reachable")
