"""The status sink: `publish_status`, a Temporal activity hosted by the operator process.

Workflows push progress here (DESIGN.md §3.4); it becomes a `/status` merge patch. A CR that
no longer exists is an answer, not an error: the update is dropped, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from kr8s.asyncio.objects import APIObject
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker
from tempotrain_workers.api import (
    PUBLISH_STATUS_ACTIVITY,
    TERMINAL_PHASES,
    Phase,
    StatusTarget,
    StatusUpdate,
)

from tempotrain_operator import compute, conditions, kube, metrics, suspension
from tempotrain_operator.mapping import status_patch, trial_patch

log = logging.getLogger(__name__)
# How long after a final push the operator waits for the workflow to close before leaving the
# release to the resync timer.
RELEASE_WAIT_SECONDS = 300.0
TRIAL_TRIES = 8


@activity.defn(name=PUBLISH_STATUS_ACTIVITY)
async def publish_status(update: StatusUpdate) -> None:
    target = update.target
    metrics.observe_push(target.kind, update.at)
    if target.kind not in kube.EXPERIMENT_KINDS:
        activity.logger.warning("status for unknown kind %s dropped", target.kind)
        return
    if target.trial is not None:
        await _publish_trial(update)
        return
    now = await _target_now(target)
    if now is None:
        return
    experiment, raw, status = now.experiment, now.raw, now.status
    patch = status_patch(update, status, now.holding)
    finished = update.phase in TERMINAL_PHASES and "phase" in patch
    if finished:
        succeeded = update.phase == Phase.SUCCEEDED
        failed_reason = "Cancelled" if update.phase == Phase.CANCELLED else "WorkflowFailed"
        patch["conditions"] = conditions.upsert(
            status.get("conditions"),
            "Completed",
            True,
            "Succeeded" if succeeded else failed_reason,
            update.message or ("the experiment finished" if succeeded else "failed"),
            raw["metadata"].get("generation"),
        )
    if update.retry is not None and not finished:
        verdict = conditions.degraded(update.retry)
        patch["conditions"] = conditions.upsert(
            status.get("conditions"),
            conditions.DEGRADED,
            verdict.ready,
            verdict.reason,
            verdict.message,
            raw["metadata"].get("generation"),
        )
    if patch:
        await kube.patch_status(experiment, patch)
    if finished and update.phase == Phase.FAILED:
        metrics.WORKFLOWS_FAILED.labels(target.kind).inc()
        try:
            await kube.post_warning(raw, _failure_reason(update.message), update.message or "")
        except Exception as err:  # the status says it already; the event is a courtesy
            activity.logger.warning("could not post the failure event: %s", err)
    if update.phase in TERMINAL_PHASES and not compute.released(status):
        # Not now: this push runs inside the workflow, which still needs its workers.
        compute.release_in_background(
            activity.client(),
            status.get("workflowId") or activity.info().workflow_id,
            target.kind,
            target.namespace,
            target.name,
            wait=RELEASE_WAIT_SECONDS,
        )


async def _publish_trial(update: StatusUpdate) -> None:
    """A sweep trial's update: its row, and the experiment's phase where the rows imply it.
    Read and written as one step (on the version read): two trials suspending at once must
    not each miss the other's row. A conflict reads again; past TRIAL_TRIES the activity
    fails and Temporal retries it."""
    target = update.target
    for _ in range(TRIAL_TRIES):
        now = await _target_now(target)
        if now is None:
            return
        patch = trial_patch(update, now.status, now.holding)
        if not patch:
            return
        try:
            await kube.patch_status(now.experiment, patch, now.raw["metadata"]["resourceVersion"])
            return
        except kube.Conflict:
            continue
    raise RuntimeError(f"{target.name} kept changing while trial {target.trial} was written")


@dataclass(frozen=True)
class _Target:
    """The experiment an update is for, as read now."""

    experiment: APIObject
    raw: dict[str, Any]
    status: dict[str, Any]
    holding: bool  # a suspension is wanted or in effect


async def _target_now(target: StatusTarget) -> _Target | None:
    """None (logged) when the experiment is gone or the update is not its."""
    experiment = await kube.get_experiment(target.namespace, target.name, target.kind)
    if experiment is None:
        activity.logger.info(
            "%s/%s is gone; dropping its status update", target.namespace, target.name
        )
        return None
    raw: dict[str, Any] = dict(experiment.raw)
    refused = refusal(target, raw)
    if refused:
        activity.logger.warning(
            "status update for %s %s/%s%s refused: %s",
            target.kind,
            target.namespace,
            target.name,
            f" (trial {target.trial})" if target.trial else "",
            refused,
        )
        return None
    status: dict[str, Any] = dict(raw.get("status") or {})
    # Held by the user, or being held by Kueue (evicted: `queueing`), which the condition says.
    holding = suspension.wanted(raw.get("spec")) or suspension.in_effect(status)
    return _Target(experiment, raw, status, holding)


def _failure_reason(message: str | None) -> str:
    """The error type a failure message starts with (`ModelNotFound: ...`), for the event."""
    head = (message or "").split(":", 1)[0].strip()
    return head if head.isidentifier() and head[:1].isupper() else "RunFailed"


def refusal(target: StatusTarget, experiment: dict[str, Any]) -> str | None:
    """Why an update must not touch this CR; None when it may. The uid is the proof: only the
    workflow the operator started for this very object carries it (a same-named CR created
    later has another), so anyone else able to reach Temporal cannot fail an experiment."""
    uid = experiment["metadata"].get("uid")
    if not target.uid:
        return "it names no uid"
    if target.uid != uid:
        return f"it is for uid {target.uid}, this object is {uid} (an older one of that name?)"
    return None


async def run_status_sink(client_factory: Any, queue: str, stop: asyncio.Event) -> None:
    """Host publish_status until stop is set; reconnects while Temporal is unreachable."""
    delay = 1.0
    while not stop.is_set():
        try:
            client: Client = await client_factory()
            worker = Worker(
                client, task_queue=queue, activities=[publish_status], max_concurrent_activities=64
            )
            async with worker:
                delay = 1.0
                log.info("status sink polling %s", queue)
                await stop.wait()
            return
        except Exception as err:  # Temporal down: keep the operator up, retry with backoff
            log.warning("status sink unavailable (%s); retrying in %.0fs", err, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
