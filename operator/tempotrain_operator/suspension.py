"""`spec.suspend`, on the operator's side: every kind's reconcile goes through here, so one
level-triggered rule holds whatever woke it (the field changing, the resync timer, a restart).

Suspending a running experiment is two steps, because its compute may only go once its work
has stopped with a checkpoint: the workflow is signalled, stops its work at a safe point and
pushes phase `Suspended` (the acknowledgement); only then are its workers scaled to 0 and its
RayCluster deleted. A workflow that does not acknowledge within GIVE_UP_SECONDS has its
compute released anyway (a trainer saves on SIGTERM too). Resuming brings the compute back
first (the kind's reconcile, which waits for a RayCluster to be ready), then signals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from temporalio.service import RPCError, RPCStatusCode
from tempotrain_workers.api import SUSPEND_SIGNAL, TERMINAL_PHASES, Phase

from tempotrain_operator import compute, conditions, kube
from tempotrain_operator.runtime import Runtime

CONDITION = "Suspended"
SUSPENDING = "Suspending"  # the condition's reason while the workflow saves and stops
GIVE_UP_SECONDS = 300.0
POLL_SECONDS = 3.0
REQUESTED_AT = "suspendRequestedAt"  # .status: when the workflow was asked to stop


@dataclass(frozen=True)
class Hold:
    """Who holds the experiment, in the words its status shows: the user (spec.suspend) or
    Kueue (`queueing`: not admitted yet, or evicted)."""

    phase: Phase
    not_started: str  # the condition's reason when held before its workflow started
    stopped: str  # ... and once its workflow has stopped
    why: str  # what holds it and what lets it go, for the message

    def message(self, what: str) -> str:
        return f"{what}; {self.why}"


BY_USER = Hold(Phase.SUSPENDED, "NotStarted", "Suspended", "set spec.suspend to false to resume")


def held_message(hold: Hold, status: Mapping[str, Any]) -> str:
    """What the message says of a held experiment: the same words whoever writes them (the
    hold itself, or the queue timer when Kueue's reason changes)."""
    if not status.get("workflowId"):
        return hold.message("not started: nothing runs")
    stopped = f"stopped with its {_checkpoint_words(status)}; its workers are released"
    return hold.message(f"{hold.phase.value.lower()}: {stopped}")


def wanted(spec: Mapping[str, Any] | None) -> bool:
    """Whether the experiment should be held now."""
    return bool((spec or {}).get("suspend"))


def in_effect(status: Mapping[str, Any]) -> bool:
    """Held, or on its way there: what a resume has to undo."""
    condition = conditions.find(status, CONDITION)
    return condition.get("status") == "True" or condition.get("reason") == SUSPENDING


def held(status: Mapping[str, Any]) -> bool:
    return conditions.is_true(status, CONDITION)


def settled(holding: bool, status: Mapping[str, Any]) -> bool:
    """Whether the experiment is where it should be: held when it should be, and not held
    (nor on its way there) when not; else its kind's reconcile has work to do."""
    return held(status) if holding else not in_effect(status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_since(timestamp: str | None) -> float:
    if timestamp is None:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds()


def _checkpoint_words(status: Mapping[str, Any]) -> str:
    step = (status.get("latestCheckpoint") or {}).get("step")
    return f"checkpoint at step {step}" if step is not None else "what it finished"


async def _signal(runtime: Runtime, workflow_id: str, suspended: bool) -> bool:
    """Tell the workflow; False when it is not running any more (nothing to suspend)."""
    try:
        handle = (await runtime.client()).get_workflow_handle(workflow_id)
        await handle.signal(SUSPEND_SIGNAL, suspended)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # closed (or unknown): the resync says so
            return False
        raise kopf.TemporaryError(f"cannot signal {workflow_id}: {err}", delay=10) from err
    except Exception as err:  # unreachable Temporal: say so and try again
        raise kopf.TemporaryError(f"cannot signal {workflow_id}: {err}", delay=10) from err
    return True


async def _write(body: kopf.Body, patch: kopf.Patch, fields: dict[str, Any]) -> None:
    """Now, not only with the handler's patch: a handler waiting (TemporaryError) must still
    show what it waits for, and a workflow's push must meet the phase this decided. Into the
    handler's patch too, which kopf applies last and must not take any of it back."""
    patch.status.update(fields)
    await kube.patch_status(await kube.experiment_of(body), fields)


def _with_condition(
    patch: kopf.Patch,
    status: Mapping[str, Any],
    meta: kopf.Meta,
    held: bool,
    reason: str,
    message: str,
) -> list[dict[str, Any]]:
    """The conditions with Suspended set, from the handler's patch when it has some (a
    merge patch replaces the whole list)."""
    current = patch.status.get("conditions") or status.get("conditions")
    return conditions.upsert(current, CONDITION, held, reason, message, meta.get("generation"))


async def suspend(
    kind: str,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    name: str,
    namespace: str,
    runtime: Runtime,
    *,
    waiting: bool = True,
    hold: Hold = BY_USER,
) -> bool:
    """Hold the experiment. Before its workflow started: nothing is created (what exists is
    released) and nothing starts. After: ask the workflow to stop, wait for its `Suspended`
    (kopf retries; `waiting=False` returns instead, for the timers), then release its
    compute. A finished or deleted one is left alone. True once it is held."""
    phase = status.get("phase")
    if phase in TERMINAL_PHASES or phase == Phase.TERMINATING:
        return False
    if held(status):
        return True
    workflow_id = status.get("workflowId")
    if not workflow_id:
        await compute.hold(kind, namespace, name, dict(spec))
        message = held_message(hold, status)
        await _write(
            body,
            patch,
            {
                "phase": hold.phase.value,
                "message": message,
                "conditions": _with_condition(patch, status, meta, True, hold.not_started, message),
            },
        )
        kube.tell(body, reason=hold.not_started, message=message)
        return True
    requested = status.get(REQUESTED_AT)
    acknowledged = phase == Phase.SUSPENDED
    # Signalled once per request, and again on each resync (which heals a lost signal): each
    # signal is history, and a handler polls every few seconds.
    resend = not acknowledged and (requested is None or not waiting)
    if resend and not await _signal(runtime, workflow_id, True):
        return False  # it has closed: the resync reports how
    if not acknowledged and requested is None:
        requested = _now()
        message = (
            f"its workflow saves a checkpoint and stops (waiting up to {GIVE_UP_SECONDS:.0f} s)"
        )
        await _write(
            body,
            patch,
            {
                REQUESTED_AT: requested,
                "conditions": _with_condition(patch, status, meta, False, SUSPENDING, message),
            },
        )
        kube.tell(body, reason=SUSPENDING, message=message)
    if not acknowledged and _seconds_since(requested) < GIVE_UP_SECONDS:
        if not waiting:
            return False
        raise kopf.TemporaryError(
            f"waiting for workflow {workflow_id} to save and stop", delay=POLL_SECONDS
        )
    await compute.hold(kind, namespace, name, dict(spec))
    if acknowledged:
        reason = hold.stopped
        message = f"stopped with its {_checkpoint_words(status)}; its workers are released"
    else:
        reason = "SuspendedUnconfirmed"
        message = (
            f"its workflow did not confirm a checkpoint within {GIVE_UP_SECONDS:.0f} s; its "
            "workers were stopped anyway (a trainer saves on SIGTERM)"
        )
    await _write(
        body,
        patch,
        {
            "phase": hold.phase.value,
            "message": held_message(hold, status)
            if acknowledged
            else hold.message(f"{hold.phase.value.lower()}: {message}"),
            # Nothing trains until resumed: no time left to show.
            "eta": None,
            "estimatedCompletionTime": None,
            "conditions": _with_condition(patch, status, meta, True, reason, message),
        },
    )
    kube.tell(body, reason=reason, message=message)
    return True


async def resume(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    runtime: Runtime,
    workflow_id: str,
    why: str | None = None,
) -> None:
    """After the kind's reconcile brought the compute back: phase Pending (the workflow's own
    next push moves it on), then the signal. `why`: what let it go, when not the user
    (Kueue admitting it)."""
    if status.get("workflowId"):
        message = f"resumed: carries on from its {_checkpoint_words(status)}"
    else:
        message = "started"  # held before it started: nothing to carry on from
    if why:
        message = f"{why}; {message}"
    fields: dict[str, Any] = {
        REQUESTED_AT: None,
        "message": message,
        "conditions": _with_condition(patch, status, meta, False, "Resumed", message),
    }
    if status.get("phase") in (Phase.SUSPENDED, Phase.QUEUED):
        fields["phase"] = Phase.PENDING.value
    await _write(body, patch, fields)
    await _signal(runtime, workflow_id, False)
    kube.tell(body, reason="Resumed", message=message)
