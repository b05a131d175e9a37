"""An experiment's compute (its worker pods, a Cifar10Scaling's RayCluster) and when it goes:
once its workflow has closed. A workflow pushes its final status from a task on its workers
and still needs them for the task after that push; releasing them at the push would leave
it Running forever with nobody to run it. Once released, the condition `ComputeReleased`
says so, and nothing looks at the experiment's compute again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from tempotrain_workers.api import CompletionPolicy

from tempotrain_operator import conditions, kube
from tempotrain_operator.children import worker_deployment_names
from tempotrain_operator.ray_children import ray_cluster_name

RELEASED = "ComputeReleased"


async def release(kind: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Worker Deployments scaled to 0; a Cifar10Scaling's RayCluster deleted unless kept."""
    keep = (spec.get("ray") or {}).get("onCompletion") == CompletionPolicy.KEEP.value
    await _free(kind, namespace, name, spec, keep_ray_cluster=keep)


async def hold(kind: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Suspended: worker Deployments scaled to 0 and our RayCluster deleted, whatever
    onCompletion says (that is about the end; a resume builds a new one)."""
    await _free(kind, namespace, name, spec, keep_ray_cluster=False)


async def _free(
    kind: str, namespace: str, name: str, spec: dict[str, Any], *, keep_ray_cluster: bool
) -> None:
    await kube.scale(namespace, worker_deployment_names(name, kind), 0)
    if kind != "Cifar10Scaling" or keep_ray_cluster:
        return
    if (spec.get("ray") or {}).get("address"):
        return  # not our cluster: we created none
    await kube.delete_if_present("RayCluster", namespace, ray_cluster_name(name))


def released(status: Mapping[str, Any]) -> bool:
    return conditions.is_true(status, RELEASED)


def released_condition(
    current: list[dict[str, Any]] | None, generation: int | None
) -> list[dict[str, Any]]:
    return conditions.upsert(
        current,
        RELEASED,
        True,
        "WorkflowClosed",
        "the workflow has closed: worker pods scaled to 0, RayCluster per its policy",
        generation,
    )


async def release_once_closed(
    client: Client,
    workflow_id: str | None,
    kind: str,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    *,
    wait: float = 0.0,
) -> bool:
    """Release the compute if the workflow has closed, waiting up to ``wait`` seconds (a long
    poll) for it to; True when released. Without a workflow there is nothing to wait for."""
    if workflow_id:
        handle = client.get_workflow_handle(workflow_id)
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            if wait <= 0:
                return False
            try:
                await asyncio.wait_for(handle.result(), wait)
            except TimeoutError:
                return False
            except Exception:  # failed or cancelled: closed either way
                pass
    await release(kind, namespace, name, spec)
    return True


_waiting: set[asyncio.Task[None]] = set()  # strong references: tasks must not be collected


def release_in_background(
    client: Client, workflow_id: str | None, kind: str, namespace: str, name: str, wait: float
) -> None:
    """After a final status push (from the workflow itself): wait for the workflow to close,
    release, and say so in the condition. A restarted operator's resync does it otherwise."""

    async def run() -> None:
        with contextlib.suppress(Exception):  # best effort: the resync timer is the backstop
            experiment = await kube.get_experiment(namespace, name, kind)
            if experiment is None:
                return
            spec = dict(dict(experiment.raw).get("spec") or {})
            if not await release_once_closed(
                client, workflow_id, kind, namespace, name, spec, wait=wait
            ):
                return
            experiment = await kube.get_experiment(namespace, name, kind)  # fresh conditions
            if experiment is not None:
                raw = dict(experiment.raw)
                condition = released_condition(
                    (raw.get("status") or {}).get("conditions"), raw["metadata"].get("generation")
                )
                await kube.patch_status(experiment, {"conditions": condition})

    task = asyncio.get_running_loop().create_task(run())
    _waiting.add(task)
    task.add_done_callback(_waiting.discard)
