"""Two operator replicas share a namespace's experiments (`--sharded`): one that joins is handed
its share, a burst is spread over them, and when one is killed in the middle of it the other
takes its experiments over. Every
experiment reaches WorkflowStarted and each workflow runs once. Back to a single operator, it
takes the replicas' finalizers over, and deletes every experiment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from tempotrain_operator.sharding import (
    HANDLED_BY,
    LEASE_LABEL,
    finalizer_for,
    is_operator_finalizer,
    owner_of,
)
from tempotrain_workers.api import FINALIZER

from tests.conftest import ClusterHandle, TemporalHandle
from tests.e2e.conftest import Stack, conditions_by_type, experiment, kube_json
from tests.support import eventually

REPLICAS = ("replica-a", "replica-b")
LEASE_SECONDS = 6  # a dead replica's experiments move after this long
RESOURCE = "bertexperiments.tempotrain.dev"


def _apply_all(cluster: ClusterHandle, namespace: str, names: list[str]) -> None:
    """One `kubectl apply` of them all: a burst, as a user's script or a sweep makes it."""
    items = [experiment(name, "models/minilm") for name in names]
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))


def _experiments(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    return list(kube_json(cluster, namespace, RESOURCE)["items"])


def _started(item: dict[str, Any]) -> bool:
    condition = conditions_by_type(item.get("status") or {}).get("WorkflowStarted") or {}
    return condition.get("status") == "True"


def _handled_by(stack: Stack, replica: str, names: list[str]) -> set[str]:
    """The experiments whose reconcile succeeded in this replica (its log)."""
    log = (stack.root / f"{replica}.log").read_text(errors="replace")
    ns = stack.namespace
    return {n for n in names if f"[{ns}/{n}] Handler 'bertexperiment_reconcile' succeeded" in log}


def _all_held_by_one(item: dict[str, Any], finalizer: str) -> bool:
    """Whether the experiment holds this one of the operators' finalizers, and no other."""
    ours = [f for f in item["metadata"].get("finalizers") or [] if is_operator_finalizer(f)]
    return ours == [finalizer]


def _all_held_by(cluster: ClusterHandle, namespace: str, finalizer: str) -> bool:
    return all(_all_held_by_one(item, finalizer) for item in _experiments(cluster, namespace))


async def test_replicas_share_a_burst_and_the_survivor_takes_over_a_dead_ones_experiments(
    crds: None, cluster: ClusterHandle, temporal: TemporalHandle, namespace: str, tmp_path: Path
) -> None:
    stack = Stack.fresh(namespace, cluster, temporal.address, tmp_path)
    try:
        await _run(stack, cluster, temporal)
    finally:
        stack.stop_all()


async def _run(stack: Stack, cluster: ClusterHandle, temporal: TemporalHandle) -> None:
    ns = stack.namespace
    sharded = ("--sharded", "--lease-seconds", str(LEASE_SECONDS))

    # One replica, then a second joins: the first hands it its share of what exists.
    stack.start_operator(None, "replica-a", *sharded, "--identity", "replica-a")
    joined = [f"joined-{i:02d}" for i in range(10)]
    _apply_all(cluster, ns, joined)

    def joined_started() -> bool:
        items = _experiments(cluster, ns)
        return len(items) == len(joined) and all(map(_started, items))

    await eventually(joined_started, within=120, what="the first replica's experiments")
    stack.start_operator(None, "replica-b", *sharded, "--identity", "replica-b")

    def shares_moved() -> bool:
        for item in _experiments(cluster, ns):
            owner = owner_of(item["metadata"]["uid"], REPLICAS)
            annotations = item["metadata"].get("annotations") or {}
            if annotations.get(HANDLED_BY) != owner:
                return False
            if not _all_held_by_one(item, finalizer_for(str(owner))):
                return False
        return True

    await eventually(shares_moved, within=60, what="the second replica's share to move to it")

    def both_see_both() -> bool:
        # Each replica logs the live replicas when they change.
        return all(
            "live operator replicas: replica-a, replica-b"
            in (stack.root / f"{replica}.log").read_text(errors="replace")
            for replica in REPLICAS
        )

    await eventually(both_see_both, within=60, what="each replica to see the other")

    early = [f"burst-{i:02d}" for i in range(30)]
    _apply_all(cluster, ns, early)

    def some_started() -> bool:
        return sum(_started(item) for item in _experiments(cluster, ns)) >= len(joined) + 6

    await eventually(some_started, within=120, what="the burst to be under way")
    stack.kill("replica-a")  # SIGKILL: no goodbye, its lease is left to go stale
    late = [f"late-{i:02d}" for i in range(15)]
    _apply_all(cluster, ns, late)  # half of them hash to the dead replica
    names = early + late  # the burst

    def all_started() -> list[dict[str, Any]] | None:
        items = _experiments(cluster, ns)
        every = len(items) == len(names) + len(joined) and all(map(_started, items))
        return items if every else None

    items = await eventually(all_started, within=300, what="every experiment to start")
    uids = {
        i["metadata"]["name"]: i["metadata"]["uid"] for i in items if i["metadata"]["name"] in names
    }
    owner_with_both = {name: owner_of(uid, REPLICAS) for name, uid in uids.items()}

    # Spread: each replica handled experiments, the dead one only its own share.
    by_a, by_b = _handled_by(stack, "replica-a", names), _handled_by(stack, "replica-b", names)
    assert by_a and by_b, (stack.log("replica-a"), stack.log("replica-b"))
    assert {owner_with_both[name] for name in by_a} == {"replica-a"}
    assert 0.3 < sum(o == "replica-a" for o in owner_with_both.values()) / len(names) < 0.7
    # Taken over: the dead replica's share that it had not handled, the survivor did.
    orphans = {name for name, owner in owner_with_both.items() if owner == "replica-a"} - by_a
    assert orphans and orphans <= by_b, (sorted(orphans), stack.log("replica-b"))

    # Every experiment is the survivor's now, with its finalizer only (the dead one's is off,
    # else deleting the experiments it had would hang).
    survivor = finalizer_for("replica-b")

    await eventually(
        lambda: _all_held_by(cluster, ns, survivor),
        within=60,
        what="the dead replica's finalizers to go",
    )
    # Each says which replica handles it: the survivor, the dead one's handed over too.
    handled = {i["metadata"]["annotations"].get(HANDLED_BY) for i in _experiments(cluster, ns)}
    assert handled == {"replica-b"}

    # Each experiment's workflow exists, and ran once: no replica started one twice.
    workflow_ids = {str(item["status"]["workflowId"]) for item in items}
    assert len(workflow_ids) == len(names) + len(joined)

    async def listed() -> Counter[str] | None:
        query = f"TaskQueue = '{stack.queues.eval}'"
        runs = Counter([w.id async for w in temporal.client.list_workflows(query)])
        return runs if set(runs) == workflow_ids else None

    runs: Counter[str] = await eventually(listed, within=60, what="the workflows to be listed")
    assert max(runs.values()) == 1, runs.most_common(3)

    # Back to one operator: the survivor stops (its lease goes with it; the killed one's
    # stays, stale), and a single operator puts its own finalizer in place of the replicas'.
    stack.stop("replica-b")
    leases = kube_json(cluster, ns, "leases")["items"]
    holders = [
        i["spec"]["holderIdentity"] for i in leases if LEASE_LABEL in i["metadata"]["labels"]
    ]
    assert holders == ["replica-a"]
    stack.start_operator(None, "single")
    await eventually(
        lambda: _all_held_by(cluster, ns, FINALIZER),
        within=60,
        what="the single operator's finalizer on every experiment",
    )

    # It deletes them all, the replicas' among them (no worker runs here: the workflows are
    # ended first, so each delete's cancellation finds a closed one).
    for workflow_id in workflow_ids:
        handle = temporal.client.get_workflow_handle(workflow_id)
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate(reason="test over")
    cluster.kubectl("delete", RESOURCE, "--all", "-n", ns, "--wait=false")
    await eventually(
        lambda: not _experiments(cluster, ns), within=120, what="every experiment to be deleted"
    )
