"""What every experiment kind's handlers do the same way: conditions, the idempotent workflow
start, and cancel-on-delete."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from tempotrain_workers.api import (
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    Phase,
    StorageSpec,
    workflow_id_for,
)

from tempotrain_operator import (
    claims,
    compute,
    conditions,
    indexes,
    kube,
    metrics,
    sharding,
    suspension,
    worker_pods,
)
from tempotrain_operator.children import (
    Experiment,
    SpecT,
    WorkerConfig,
    build_pvc,
    claim_name_of,
    pvc_is_owned,
    worker_config,
)
from tempotrain_operator.runtime import Runtime

CANCEL_WAIT_SECONDS = 20.0  # per try of the delete handler
# How long a deleted CR waits for its cancelled workflow to close before it is terminated.
CLOSE_GIVE_UP_SECONDS = 600.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    patch: kopf.Patch,
    status: kopf.Status,
    meta: kopf.Meta,
    type_: str,
    ok: bool,
    reason: str,
    message: str,
) -> None:
    current = patch.status.get("conditions") or status.get("conditions")
    patch.status["conditions"] = conditions.upsert(
        current, type_, ok, reason, message, meta.get("generation")
    )


def say(
    patch: kopf.Patch,
    status: kopf.Status,
    meta: kopf.Meta,
    type_: str,
    verdict: conditions.Verdict | None,
) -> None:
    """The condition as the verdict has it; nothing when there is none (nothing to say yet)."""
    if verdict is not None:
        set_condition(patch, status, meta, type_, verdict.ready, verdict.reason, verdict.message)


def namespaced(namespace: str | None, kind: str) -> str:
    if namespace is None:  # the CRDs are namespaced; kopf types it optional for cluster kinds
        raise kopf.PermanentError(f"a {kind} must have a namespace")
    return namespace


def validation_problems(err: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def storage_errors(storage: StorageSpec) -> list[str]:
    errors = []
    for volume in ("snapshots", "runs"):
        claim = getattr(storage, volume)
        if claim.existing_claim and claim.reclaim_policy.value == "Delete":
            errors.append(
                f"storage.{volume}: reclaimPolicy Delete cannot apply to "
                f"existingClaim {claim.existing_claim!r} (not ours to delete)"
            )
    return errors


def image_errors(images: dict[str, str | None], allowed: Sequence[str]) -> list[str]:
    """The images an experiment sets itself (field path → image) that no allowed pattern
    matches; none when every image is allowed (no patterns)."""
    if not allowed:
        return []
    return [
        f"{path}: image {image!r} is not allowed here (allowed: {', '.join(allowed)})"
        for path, image in images.items()
        if image and not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed)
    ]


def volume_children(body: kopf.Body, experiment: Experiment[Any]) -> list[dict[str, Any]]:
    """The snapshots and runs PVCs to create; owned (deleted with the CR) only when Delete."""
    pvcs = []
    for volume in ("snapshots", "runs"):
        pvc = build_pvc(experiment, volume)
        if pvc is not None:
            if pvc_is_owned(experiment, volume):
                kopf.append_owner_reference(pvc, owner=body)
            pvcs.append(pvc)
    return pvcs


async def resync_from_workflow(
    kind: str,
    name: str,
    namespace: str,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    runtime: Runtime,
    logger: kopf.Logger,
    derive: Callable[[Client, str], Awaitable[dict[str, Any]]],
    restart: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Re-derive status from the workflow (heals any missed push: operator down, etc.) and
    release the compute of an experiment whose workflow has closed. A workflow Temporal no
    longer knows (a wiped dev server, a restored namespace) is started again under its id
    by `restart` (the kind's reconcile): it resumes from what is on the volumes."""
    workflow_id = status.get("workflowId")
    if not workflow_id or compute.released(status) or status.get("phase") == Phase.TERMINATING:
        return
    if status.get("phase") not in TERMINAL_PHASES:
        # First, whatever the workflow says: workers that cannot start leave it with nothing
        # to say (its first task never runs).
        await report_worker_pods(name, namespace, status, patch, meta)
        await report_storage(name, namespace, spec, status, patch, meta)
        try:
            derived = await derive(await runtime.client(), workflow_id)
        except Exception as err:  # best effort; the next tick tries again
            if restart is not None and workflow_lost(err):
                await _restart_lost(workflow_id, status, patch, meta, logger, restart)
            else:
                logger.warning("resync of %s skipped: %s", workflow_id, err)
            return
        for key, value in derived.items():
            patch.status[key] = value
        if derived.get("phase") not in TERMINAL_PHASES:
            return
    await release_if_closed(kind, name, namespace, spec, status, patch, meta, runtime)


def closed_phase(state: WorkflowExecutionStatus | None) -> str:
    """The phase of a workflow that closed without a result: Cancelled when it was."""
    cancelled = state == WorkflowExecutionStatus.CANCELED
    return (Phase.CANCELLED if cancelled else Phase.FAILED).value


def workflow_lost(err: BaseException) -> bool:
    """Temporal answered, and it does not know the workflow (not: it is unreachable)."""
    return isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND


async def _restart_lost(
    workflow_id: str,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    logger: kopf.Logger,
    restart: Callable[[], Awaitable[None]],
) -> None:
    message = (
        f"Temporal no longer knows workflow {workflow_id} (a wiped or restored server): "
        "started it again under the same id; it resumes from the last verified checkpoint"
    )
    logger.warning(message)
    await restart()
    set_condition(patch, status, meta, "WorkflowStarted", True, "WorkflowRestarted", message)


async def report_worker_pods(
    name: str, namespace: str, status: kopf.Status, patch: kopf.Patch, meta: kopf.Meta
) -> None:
    """The condition WorkersReady from the experiment's worker pods: a pod that cannot start
    (image, claim, room, config) or keeps crashing says why on the experiment."""
    try:
        _, health = await _worker_pods_health(name, namespace)
    except Exception:  # best effort: the next tick tries again
        return
    say(patch, status, meta, worker_pods.CONDITION, health)


async def report_storage(
    name: str,
    namespace: str,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
) -> None:
    """The condition StorageReady from the experiment's claims: one that stays Pending (no
    such class, an access mode the class cannot give) or an existing claim that is not
    there says why on the experiment, with what to set. Once every claim is bound it is not
    looked at again (a bound claim stays bound; a pod that loses it says so in WorkersReady).
    Claims and events as the operator's watches have them (`indexes`): no request."""
    if conditions.is_true(status, claims.CONDITION):
        return
    storage = StorageSpec.model_validate(spec.get("storage") or {})
    states = []
    try:
        for volume in ("snapshots", "runs"):
            volume_spec = getattr(storage, volume)
            claim = claim_name_of(name, volume_spec, volume)
            raw = indexes.claim(namespace, claim)
            pending = raw is not None and (raw.get("status") or {}).get("phase") == "Pending"
            warnings = (
                indexes.warnings_about(namespace, "PersistentVolumeClaim", claim) if pending else []
            )
            existing = volume_spec.existing_claim is not None
            states.append(claims.ClaimState(volume, claim, raw, warnings, existing))
    except Exception:  # best effort: the next tick tries again
        return
    say(patch, status, meta, claims.CONDITION, claims.storage_health(states, datetime.now(UTC)))


async def release_if_closed(
    kind: str,
    name: str,
    namespace: str,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    runtime: Runtime,
) -> None:
    """A finished experiment's compute goes once its workflow has closed (`compute.py`);
    while it has not, or Temporal cannot say, the resync timer asks again."""
    if compute.released(status):
        return
    with contextlib.suppress(Exception):
        client = await runtime.client()
        workflow_id = status.get("workflowId")
        closed = await compute.release_once_closed(
            client, workflow_id, kind, namespace, name, dict(spec)
        )
        if closed:
            current = patch.status.get("conditions") or status.get("conditions")
            patch.status["conditions"] = compute.released_condition(current, meta.get("generation"))


# Resyncs of experiments created together tick together: a thousand of them at once queued
# thousands of requests in the HTTP client's pool, whose scheduling of waiting requests
# grows with the square of their number (py-spy: a third of the operator's CPU). A few at a
# time finish the same work sooner, and leave room for the handlers of new experiments.
_RESYNC_SLOTS = asyncio.Semaphore(16)


def register_resync(
    plural: str, handler: Any, interval: float, reconcile: Callable[..., Awaitable[None]]
) -> None:
    """A slow timer that re-derives status from the workflow (heals missed pushes). The
    handler gets `restart`: the kind's reconcile with this object's arguments, which starts
    again a workflow that Temporal has lost."""

    async def resync(**kwargs: Any) -> None:
        arguments = {"started": datetime.now(UTC), **kwargs}
        async with _RESYNC_SLOTS:
            await heal_suspension(kwargs["spec"], kwargs["status"], reconcile, arguments)
            await handler(**kwargs, restart=functools.partial(reconcile, **arguments))

    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=handler.__name__,
        interval=interval,
        initial_delay=interval / 2,
        idle=min(10.0, interval),
        when=sharding.owned,
    )(resync)


async def heal_suspension(
    spec: kopf.Spec,
    status: kopf.Status,
    reconcile: Callable[..., Awaitable[None]],
    arguments: dict[str, Any],
) -> None:
    """spec.suspend and what the experiment does disagree (a change kopf's field handler
    never saw through, such as suspend and resume in quick succession, or a workflow still
    saving): the kind's reconcile once more, without waiting in this timer."""
    phase = status.get("phase")
    if phase in TERMINAL_PHASES or phase == Phase.TERMINATING:
        return
    if not suspension.settled(suspension.wanted(spec), status):
        with contextlib.suppress(kopf.TemporaryError):  # the next tick tries again
            await reconcile(**arguments, waiting=False)


def register_suspend(plural: str, reconcile: Callable[..., Awaitable[None]]) -> None:
    """`spec.suspend` changed (`kubectl patch ... --type=merge -p '{"spec":{"suspend":true}}'`):
    the kind's reconcile holds or resumes the experiment (`suspension`). At creation the
    create handler does it; a finished experiment stays as it is, and says so."""

    async def suspend_changed(
        body: kopf.Body, status: kopf.Status, old: Any, new: Any, **kwargs: Any
    ) -> None:
        if old is None:
            return  # created so: the create handler holds it
        phase = status.get("phase")
        if phase in TERMINAL_PHASES:
            verb = "suspend" if new else "resume"
            message = f"the run is over ({phase}): there is nothing to {verb}"
            kube.tell(body, reason="SuspendIgnored", message=message)
            return
        await reconcile(body=body, status=status, **kwargs)

    kopf.on.field(GROUP, VERSION, plural, id="suspend", field="spec.suspend", when=sharding.owned)(
        suspend_changed
    )


def reject_spec(
    body: kopf.Body, patch: kopf.Patch, status: kopf.Status, meta: kopf.Meta, problem: str
) -> None:
    """Permanent: Failed with an InvalidSpec condition; no workflow, no retries, no crash loop."""
    patch.status["phase"] = "Failed"
    patch.status["message"] = problem
    set_condition(patch, status, meta, "SpecValid", False, "InvalidSpec", problem)
    kopf.warn(body, reason="InvalidSpec", message=problem)


async def start_workflow_once(
    runtime: Runtime,
    workflow: str,
    request: BaseModel,
    workflow_id: str,
    queue: str,
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    status: kopf.Status,
    meta: kopf.Meta,
    logger: kopf.Logger,
    rerun_failed: bool = False,
) -> None:
    """Start (or find running) the one workflow of this CR; a closed one is never rerun,
    unless it failed and `rerun_failed` (a retry the user asked for)."""
    try:
        client = await runtime.client()
        await client.start_workflow(
            workflow,
            request,
            id=workflow_id,
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
            if rerun_failed
            else WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        # Closed already (it finished while the operator was away): never run it twice; the
        # resync timer derives the final status from it.
        logger.info("workflow %s already ran to completion", workflow_id)
    except Exception as err:  # unreachable Temporal: say so, back off, try again
        set_condition(
            patch,
            status,
            meta,
            "WorkflowStarted",
            False,
            "TemporalUnavailable",
            f"cannot start {workflow_id}: {err}",
        )
        raise kopf.TemporaryError(f"Temporal unavailable: {err}", delay=10) from err
    sharding.mark(meta, patch)
    set_condition(patch, status, meta, "SpecValid", True, "Valid", "spec accepted")
    set_condition(
        patch,
        status,
        meta,
        "WorkflowStarted",
        True,
        "WorkflowStarted",
        f"workflow {workflow_id} on {queue}",
    )
    # Written now, not with the handler's patch: kopf records the handler as done (an
    # annotation) before it patches the status, and an operator killed in between would
    # leave the experiment started with no workflowId, which nothing heals (chaos bench).
    started = {
        "workflowId": workflow_id,
        "observedGeneration": meta.get("generation"),
        "conditions": patch.status["conditions"],
    }
    await kube.patch_status(await kube.experiment_of(body), started)
    kube.tell(body, reason="WorkflowStarted", message=f"workflow {workflow_id}")
    metrics.WORKFLOWS_STARTED.labels(str(body.get("kind"))).inc()


async def apply_edit(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    problem: str,
    deployments: Callable[[], Awaitable[list[dict[str, Any]]]],
) -> None:
    """A spec edit the CRD let through: what the run does cannot change (CEL transition
    rules), where and how it runs can (resources, image, env, worker count). Rolled out to
    the worker Deployments of a run that is not over; `observedGeneration` says it was seen.
    An edit the operator refuses (`problem`, e.g. an image not allowed) changes nothing and
    says so in SpecValid: the run goes on as it was."""
    generation = meta.get("generation")
    if problem:
        message = f"edit not applied (generation {generation}): {problem}"
        set_condition(patch, status, meta, "SpecValid", False, "InvalidEdit", message)
        kopf.warn(body, reason="InvalidEdit", message=message)
        return
    if status.get("phase") in TERMINAL_PHASES:
        kube.tell(body, reason="EditIgnored", message="the run is over: nothing to roll out")
    else:
        changed = await kube.roll_out(await deployments())
        if changed:
            kube.tell(
                body, reason="RolledOut", message=f"spec edit applied to {', '.join(changed)}"
            )
        set_condition(patch, status, meta, "SpecValid", True, "Valid", "spec accepted")
    patch.status["observedGeneration"] = generation


def register_edit(
    plural: str,
    kind: str,
    validated: Callable[[kopf.Spec, Sequence[str]], tuple[SpecT | None, str]],
    deployments: Callable[
        [kopf.Body, Experiment[SpecT], WorkerConfig], Awaitable[list[dict[str, Any]]]
    ],
) -> None:
    """On changes of the spec (kopf leaves status out): the kind's `validated` spec and its
    worker `deployments` as they are built now, through `apply_edit`."""

    async def edit(
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        status: kopf.Status,
        name: str,
        namespace: str | None,
        uid: str,
        patch: kopf.Patch,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        runtime: Runtime = memo.runtime
        model, problem = validated(spec, runtime.settings.allowed_images)

        async def built() -> list[dict[str, Any]]:
            assert model is not None  # built only for an edit without a problem
            where = namespaced(namespace, kind)
            experiment = Experiment(name=name, namespace=where, uid=uid, spec=model)
            return await deployments(body, experiment, worker_config(runtime.settings, uid))

        await apply_edit(body, status, patch, meta, problem, built)

    kopf.on.update(GROUP, VERSION, plural, id="edit", field="spec", when=sharding.owned)(edit)


# What a retried experiment's last run said that no longer holds.
# (WorkloadFinished: `queueing`'s; a retried run is queued anew, with a new Workload.)
RETRY_CLEARS = frozenset({"Completed", compute.RELEASED, "Degraded", "WorkloadFinished"})


def register_retry(plural: str, reconcile: Callable[..., Awaitable[None]]) -> None:
    """A Failed experiment whose data is intact runs again, without delete and re-apply,
    when its `spec.retryGeneration` is raised
    (`kubectl patch ... --type=merge -p '{"spec":{"retryGeneration":1}}'`). A field of the
    spec, not an annotation: kopf leaves the annotations of its own prefix out of the diffs
    it hands to handlers."""

    async def retry(
        body: kopf.Body, status: kopf.Status, old: Any, new: Any, **kwargs: Any
    ) -> None:
        phase = status.get("phase")
        if not new or (old is not None and new <= old) or not phase:
            return  # its default at creation, or lowered: nothing to retry
        # kopf's `retry`: how often this handler was tried already. A retry under way (its
        # Ray cluster not ready yet, Temporal unreachable) was reset to Pending by its first try.
        resuming = kwargs.get("retry", 0) > 0 and phase == Phase.PENDING
        if phase != Phase.FAILED and not resuming:
            message = f"only a Failed experiment is retried; this one is {phase}"
            kube.tell(body, reason="RetryIgnored", message=message)
            return
        if not resuming:
            kube.tell(
                body,
                reason="Retrying",
                message=f"retry {new}: the run starts again from where it got (its last "
                "verified checkpoint, its finished scales or chunks)",
            )
            await reset_for_retry(body, status, kwargs["patch"])
        await reconcile(body=body, status=status, rerun=True, **kwargs)

    kopf.on.field(
        GROUP, VERSION, plural, id="retry", field="spec.retryGeneration", when=sharding.owned
    )(retry)


async def reset_for_retry(body: kopf.Body, status: kopf.Status, patch: kopf.Patch) -> None:
    """Back to Pending before the new run starts (its pushes must not meet a terminal
    phase); the last run's outcome goes, its checkpoints and attempts' history stay. The
    kind's reconcile then brings its compute back (`rerun`)."""
    cleared: dict[str, Any] = {
        "phase": Phase.PENDING.value,
        "message": None,
        "completionTime": None,
    }
    rows = status.get("trialRuns") or {}
    if rows:  # a sweep: every trial runs again (from its checkpoint), its row from Pending
        cleared["trialRuns"] = {
            name: {"phase": Phase.PENDING.value, "message": None} for name in rows
        }
    await kube.patch_status(await kube.experiment_of(body), cleared)
    patch.status["conditions"] = [
        c for c in status.get("conditions") or [] if c.get("type") not in RETRY_CLEARS
    ]


def cancel_on_delete(plural: str) -> None:
    """On delete, cancel the CR's workflow (activities checkpoint on their way out) and keep
    the finalizer until it has closed: the worker pods belong to the CR, and a workflow
    whose workers are gone would never finish cancelling."""
    # An explicit id: kopf keeps a retried handler's progress in an annotation named after
    # it, and annotation names may not start with "_".
    kopf.on.delete(GROUP, VERSION, plural, id="cancel-workflow", when=sharding.owned)(
        _cancel_on_delete
    )


async def _cancel_on_delete(
    body: kopf.Body,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    uid: str,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    runtime: timedelta,
    **_: Any,
) -> None:
    namespace = namespaced(namespace, "experiment")
    workflow_id = workflow_of(body)
    finished = status.get("phase") in TERMINAL_PHASES
    if not finished and status.get("phase") != Phase.TERMINATING:
        # Being deleted, never "Failed": written now, before the cancellation, so that what
        # the workflow pushes on its way out ranks below it; the resync leaves it alone.
        await kube.patch_status(
            await kube.experiment_of(body),
            {
                "phase": Phase.TERMINATING.value,
                "message": "deleted: its workflow is cancelled (the trainer saves first)",
            },
        )
    if await cancel_workflow(workflow_id, memo.runtime, logger):
        if not finished:
            patch.status["phase"] = Phase.CANCELLED.value
        return
    running = await _workers_running(name, namespace)
    if running and runtime.total_seconds() < CLOSE_GIVE_UP_SECONDS:
        raise kopf.TemporaryError(
            f"workflow {workflow_id} is cancelled and still closing (its activities save a "
            "checkpoint first); the experiment and its pods stay until it has closed",
            delay=10,
        )
    # Nothing may outlive its CR: stop it without a last checkpoint, at once when no worker
    # runs that could close it (pods that never started), else after this long.
    why = "no worker pod runs to close it" if not running else f"not closed in {runtime}"
    logger.warning("terminating workflow %s: %s", workflow_id, why)
    with contextlib.suppress(Exception):
        handle = (await memo.runtime.client()).get_workflow_handle(workflow_id)
        await handle.terminate(reason=f"its custom resource was deleted; {why}")


def workflow_of(experiment: Mapping[str, Any]) -> str:
    """The id of an experiment's workflow, from the object, not from .status: a crash
    between the start and the status patch must not leave a workflow behind."""
    meta = experiment["metadata"]
    kind, namespace = str(experiment["kind"]), str(meta["namespace"])
    return workflow_id_for(kind, namespace, str(meta["name"]), str(meta["uid"]))


async def _workers_running(name: str, namespace: str) -> bool:
    """Whether the experiment has worker pods that run or are starting, as far as the API
    says: none at all, or ones that cannot start, will never close its workflow."""
    try:
        pods, health = await _worker_pods_health(name, namespace)
    except Exception:  # cannot tell: assume they do, and wait
        return True
    return bool(pods) and (health is None or health.ready)


async def _worker_pods_health(
    name: str, namespace: str
) -> tuple[list[dict[str, Any]], conditions.Verdict | None]:
    """The experiment's worker pods, and what their status says, or failing that, what the
    kubelet said of the volumes of one stuck being created."""
    pods = indexes.pods_of(namespace, name)
    health = worker_pods.workers_health(pods)
    if health is None:
        for pod_name in worker_pods.stuck_creating(pods, datetime.now(UTC)):
            events = indexes.warnings_about(namespace, "Pod", pod_name)
            health = worker_pods.mount_problem(pod_name, events)
            if health is not None:
                break
    return pods, health


async def cancel_workflow(workflow_id: str, runtime: Runtime, logger: kopf.Logger) -> bool:
    """Cancel the CR's workflow if running (its activities save a checkpoint on the way out)
    and wait, bounded, for it to close. True when nothing is left to wait for: no workflow,
    a closed one, or an unreachable Temporal (which must not pin the CR forever)."""
    try:
        handle = (await runtime.client()).get_workflow_handle(workflow_id)
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return True
        await handle.cancel()  # a repeated request changes nothing
        return await _wait_closed(handle, CANCEL_WAIT_SECONDS)
    except Exception as err:
        logger.warning("could not cancel %s cleanly: %s", workflow_id, err)
        return True


async def _wait_closed(handle: WorkflowHandle[Any, Any], within: float) -> bool:
    """Wait (long poll, bounded) until the cancelled workflow has closed, however it ended;
    False when it is still running after ``within`` seconds."""
    try:
        await asyncio.wait_for(handle.result(), within)
    except TimeoutError:
        return False
    except Exception:  # cancelled or failed: closed either way
        return True
    return True
