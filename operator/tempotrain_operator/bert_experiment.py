"""kopf handlers for BertExperiment: reconcile children, start the workflow once, heal status,
cancel on delete. Long work lives in Temporal; nothing here sleeps or trains."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from tempotrain_workers.api import (
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    BertExperimentSpec,
    CoordinatorWorkflowResult,
    Phase,
    workflow_id_for,
)
from tempotrain_workers.workflows.training import CheckpointedBertTrainingWorkflow

from tempotrain_operator import conditions, kube
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_pvc,
    build_worker_deployment,
    pvc_is_owned,
    worker_deployment_names,
)
from tempotrain_operator.mapping import coordinator_input, run_id_of
from tempotrain_operator.runtime import Runtime

PLURAL = "bertexperiments"
CANCEL_WAIT_SECONDS = 20.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_condition(
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


def _namespaced(namespace: str | None) -> str:
    if namespace is None:  # the CRD is namespaced; kopf types it optional for cluster kinds
        raise kopf.PermanentError("a BertExperiment must have a namespace")
    return namespace


def semantic_errors(spec: BertExperimentSpec) -> list[str]:
    """Rules the schema cannot state (or that must hold even if the CRD is old)."""
    errors = []
    for volume in ("snapshots", "runs"):
        claim = getattr(spec.storage, volume)
        if claim.existing_claim and claim.reclaim_policy.value == "Delete":
            errors.append(
                f"storage.{volume}: reclaimPolicy Delete cannot apply to "
                f"existingClaim {claim.existing_claim!r} (not ours to delete)"
            )
    if spec.dataset.file and spec.dataset.config:
        errors.append("dataset.config applies to Hub datasets, not to dataset.file")
    return errors


def _validated(spec: kopf.Spec) -> tuple[BertExperimentSpec | None, str]:
    try:
        model = BertExperimentSpec.model_validate(dict(spec))
    except ValidationError as err:
        return None, "; ".join(
            f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
    problems = semantic_errors(model)
    return (None, "; ".join(problems)) if problems else (model, "")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def bertexperiment_reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    uid: str,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    runtime: Runtime = memo.runtime
    namespace = _namespaced(namespace)
    if status.get("phase") in TERMINAL_PHASES:
        await kube.scale_to_zero(namespace, worker_deployment_names(name))
        return  # terminal stays terminal
    model, problem = _validated(spec)
    if model is None:
        patch.status["phase"] = Phase.FAILED.value
        patch.status["message"] = problem
        _set_condition(patch, status, meta, "SpecValid", False, "InvalidSpec", problem)
        kopf.warn(body, reason="InvalidSpec", message=problem)
        return  # permanent: no workflow, no retries, no crash loop

    experiment = Experiment(name=name, namespace=namespace, uid=uid, spec=model)
    training_queue, eval_queue = runtime.settings.queues_for(uid)
    await _ensure_children(body, experiment, runtime, training_queue, eval_queue)

    if not status.get("phase"):
        # Written now, not with the handler's patch: the workflow's own updates (Snapshotting,
        # Training) may land before the handler returns, and phase must not go back.
        obj = await kube.BertExperimentResource(dict(body))  # the body kopf handed us: no GET
        await kube.patch_status(obj, {"phase": Phase.PENDING.value, "startTime": _now()})

    workflow_id = workflow_id_for("BertExperiment", namespace, name, uid)
    request = coordinator_input(
        name, namespace, uid, model, runtime.settings.status_queue, training_queue, eval_queue
    )
    try:
        client = await runtime.client()
        await client.start_workflow(
            "CoordinatorWorkflow",
            request,
            id=workflow_id,
            task_queue=eval_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        # Closed already (it finished while the operator was away): never run it twice; the
        # resync timer derives the final status from it.
        logger.info("workflow %s already ran to completion", workflow_id)
    except Exception as err:  # unreachable Temporal: say so, back off, try again
        _set_condition(
            patch,
            status,
            meta,
            "WorkflowStarted",
            False,
            "TemporalUnavailable",
            f"cannot start {workflow_id}: {err}",
        )
        raise kopf.TemporaryError(f"Temporal unavailable: {err}", delay=10) from err

    patch.status["workflowId"] = workflow_id
    patch.status["runId"] = run_id_of(name, model)
    patch.status["observedGeneration"] = meta.get("generation")
    _set_condition(patch, status, meta, "SpecValid", True, "Valid", "spec accepted")
    _set_condition(
        patch,
        status,
        meta,
        "WorkflowStarted",
        True,
        "WorkflowStarted",
        f"workflow {workflow_id} on {eval_queue}",
    )
    kopf.info(body, reason="WorkflowStarted", message=f"workflow {workflow_id}")


async def _ensure_children(
    body: kopf.Body, experiment: Experiment, runtime: Runtime, training_queue: str, eval_queue: str
) -> None:
    workers = WorkerConfig(
        image=runtime.settings.worker_image,
        temporal_address=runtime.settings.temporal_address,
        temporal_namespace=runtime.settings.temporal_namespace,
        training_queue=training_queue,
        eval_queue=eval_queue,
    )
    children: list[dict[str, Any]] = []
    for volume in ("snapshots", "runs"):
        pvc = build_pvc(experiment, volume)
        if pvc is not None:
            if pvc_is_owned(experiment, volume):
                kopf.append_owner_reference(pvc, owner=body)
            children.append(pvc)
    for role in ("training", "eval"):
        deployment = build_worker_deployment(experiment, workers, role)
        kopf.append_owner_reference(deployment, owner=body)
        children.append(deployment)
    for child in children:
        try:
            created = await kube.create_if_absent(child)
        except Exception as err:
            kopf.warn(
                body,
                reason="ChildCreateFailed",
                message=f"{child['kind']} {child['metadata']['name']}: {err}",
            )
            raise kopf.TemporaryError(f"cannot create {child['kind']}: {err}", delay=15) from err
        if created:
            kopf.info(
                body, reason="Created", message=f"{child['kind']} {child['metadata']['name']}"
            )


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def bertexperiment_delete(
    status: kopf.Status, name: str, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    """Cancel the workflow (the trainer saves a checkpoint on its way out), then let go."""
    workflow_id = status.get("workflowId")
    if not workflow_id:
        return
    runtime: Runtime = memo.runtime
    try:
        handle = (await runtime.client()).get_workflow_handle(workflow_id)
        description = await handle.describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel()
            await _wait_closed(handle, CANCEL_WAIT_SECONDS)
    except Exception as err:  # bounded: an unreachable Temporal must not pin the CR forever
        logger.warning("could not cancel %s cleanly: %s", workflow_id, err)


async def _wait_closed(handle: WorkflowHandle[Any, Any], within: float) -> None:
    """Wait (long poll, bounded) until the cancelled workflow has closed, however it ended."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.result(), within)


async def bertexperiment_resync(
    status: kopf.Status,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Re-derive status from the workflow: heals any missed push (operator down, etc.).
    Registered as a timer by `register_resync` with the configured interval."""
    workflow_id = status.get("workflowId")
    if not workflow_id or status.get("phase") in TERMINAL_PHASES:
        return
    runtime: Runtime = memo.runtime
    namespace = _namespaced(namespace)
    known_step = (status.get("latestCheckpoint") or {}).get("step", -1)
    try:
        derived = await derive_status(await runtime.client(), workflow_id, known_step)
    except Exception as err:  # best effort; the next tick tries again
        logger.warning("resync of %s skipped: %s", workflow_id, err)
        return
    for key, value in derived.items():
        patch.status[key] = value
    if derived.get("phase") in TERMINAL_PHASES:
        await kube.scale_to_zero(namespace, worker_deployment_names(name))


def register_resync(interval: float) -> None:
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=interval,
        initial_delay=interval / 2,
        idle=min(10.0, interval),
    )(bertexperiment_resync)


async def derive_status(client: Client, workflow_id: str, known_step: int) -> dict[str, Any]:
    """The status fields the workflow's own state implies (describe, result, query)."""
    handle = client.get_workflow_handle(workflow_id, result_type=CoordinatorWorkflowResult)
    state = (await handle.describe()).status
    if state == WorkflowExecutionStatus.COMPLETED:
        run = (await handle.result()).runs[0]
        return {
            "phase": Phase.SUCCEEDED.value,
            "completionTime": _now(),
            "metrics": {
                "trainLoss": run.training.train_loss,
                "evalLoss": run.evaluation.loss,
                "evalAccuracy": run.evaluation.accuracy,
                "numEvalExamples": run.evaluation.num_examples,
            },
        }
    if state != WorkflowExecutionStatus.RUNNING:
        return {
            "phase": Phase.FAILED.value,
            "completionTime": _now(),
            "message": f"workflow {workflow_id} ended {state.name if state else 'unknown'}",
        }
    child = client.get_workflow_handle(f"{workflow_id}-train-0")
    latest = await child.query(
        CheckpointedBertTrainingWorkflow.get_latest_checkpoint,
    )
    if latest is None or latest.step <= known_step:
        return {}
    return {
        "latestCheckpoint": {
            "step": latest.step,
            "epoch": latest.epoch,
            "loss": latest.loss,
            "path": latest.path,
            "savedAt": latest.saved_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }
