"""kopf handlers for BertExperiment: reconcile children, start the workflow once, heal status,
cancel on delete. Long work lives in Temporal; nothing here sleeps or trains."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from tempotrain_workers.api import (
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    BertExperimentSpec,
    CoordinatorWorkflowResult,
    Phase,
    TrainingHeartbeat,
    training_workflow_id,
    workflow_id_for,
)

from tempotrain_operator import kube, lifecycle, metrics, queueing, run_events, sharding, suspension
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_worker_deployment,
    claim_name,
    trainers,
    worker_config,
    worker_deployment_names,
)
from tempotrain_operator.lifecycle import (
    image_errors,
    namespaced,
    now,
    reject_spec,
    release_if_closed,
    start_workflow_once,
    storage_errors,
    validation_problems,
    volume_children,
)
from tempotrain_operator.mapping import (
    TRIAL_FIELDS,
    checkpoint_patch,
    coordinator_input,
    first_status,
    latest_step,
    metrics_display,
    progress_patch,
    run_id_of,
)
from tempotrain_operator.runtime import Runtime

PLURAL = "bertexperiments"
DESCRIBE_TIMEOUT = timedelta(seconds=10)
KIND = "BertExperiment"


def semantic_errors(spec: BertExperimentSpec) -> list[str]:
    """Rules the schema cannot state (or that must hold even if the CRD is old)."""
    errors = storage_errors(spec.storage)
    if spec.dataset.file and spec.dataset.config:
        errors.append("dataset.config applies to Hub datasets, not to dataset.file")
    return errors


def _validated(
    spec: kopf.Spec, allowed_images: Sequence[str]
) -> tuple[BertExperimentSpec | None, str]:
    try:
        model = BertExperimentSpec.model_validate(dict(spec))
    except ValidationError as err:
        return None, validation_problems(err)
    images = {"spec.workers.image": model.workers.image}
    problems = semantic_errors(model) + image_errors(images, allowed_images)
    return (None, "; ".join(problems)) if problems else (model, "")


@metrics.timed_reconcile("BertExperiment")
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
    rerun: bool = False,
    waiting: bool = True,
    **_: Any,
) -> None:
    """`rerun`: a Failed experiment the user asked to run again (`lifecycle.register_retry`):
    its workers come back and its workflow starts again under its id, resuming from the last
    verified checkpoint. `spec.suspend` holds it (`suspension`); `waiting`: whether to wait
    for the workflow to stop (kopf retries) or to look again later (the resync timer)."""
    runtime: Runtime = memo.runtime
    namespace = namespaced(namespace, KIND)
    if status.get("phase") in TERMINAL_PHASES and not rerun:
        await release_if_closed(KIND, name, namespace, spec, status, patch, meta, runtime)
        return  # terminal stays terminal
    model, problem = _validated(spec, runtime.settings.allowed_images)
    if model is None:
        reject_spec(body, patch, status, meta, problem)
        return
    experiment = Experiment(name=name, namespace=namespace, uid=uid, spec=model)
    workers = worker_config(runtime.settings, uid)
    deployments = _deployments(body, experiment, workers)
    go, queue = await queueing.hold_or_place(
        KIND, body, spec, status, patch, meta, runtime, deployments, waiting=waiting
    )
    if not go:
        return
    resuming = suspension.in_effect(status)
    await kube.create_children(body, volume_children(body, experiment) + deployments)

    if rerun or resuming:
        training, evaluation = worker_deployment_names(name)
        await kube.scale(namespace, [training], trainers(model))
        await kube.scale(namespace, [evaluation], 1)
    first = {} if status.get("runsClaim") else first_status(name, model, runs_claim(experiment))
    if not status.get("startTime"):
        # Written now, not with the handler's patch: the workflow's own updates (Snapshotting,
        # Training, a trial's row) may land before the handler returns, and must not go back.
        obj = await kube.experiment_of(body)  # the body kopf handed us: no GET
        await kube.patch_status(obj, {"phase": Phase.PENDING.value, "startTime": now()} | first)
    elif first:  # started before it was reported: no workflow update can race with it
        patch.status.update(first)

    workflow_id = workflow_id_for(KIND, namespace, name, uid)
    request = coordinator_input(
        name,
        namespace,
        uid,
        model,
        runtime.settings.status_queue,
        workers.training_queue,
        workers.eval_queue,
    )
    await start_workflow_once(
        runtime,
        "CoordinatorWorkflow",
        request,
        workflow_id,
        workers.eval_queue,
        body=body,
        patch=patch,
        status=status,
        meta=meta,
        logger=logger,
        rerun_failed=rerun,
    )
    patch.status["runId"] = run_id_of(name, model)
    if resuming:
        why = queueing.admitted_words(queue)
        await suspension.resume(body, status, patch, meta, runtime, workflow_id, why)


# Registered as plain calls: the name stays the typed function, which register_resync
# hands to the resync timer to start a lost workflow again.
kopf.on.resume(GROUP, VERSION, PLURAL, when=sharding.owned)(bertexperiment_reconcile)
kopf.on.create(GROUP, VERSION, PLURAL, when=sharding.owned)(bertexperiment_reconcile)
lifecycle.register_retry(PLURAL, bertexperiment_reconcile)
lifecycle.register_suspend(PLURAL, bertexperiment_reconcile)


def runs_claim(experiment: Experiment[BertExperimentSpec]) -> str:
    return claim_name(experiment, "runs")


def _deployments(
    body: kopf.Body, experiment: Experiment[BertExperimentSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    deployments = []
    for role in ("training", "eval"):
        deployment = build_worker_deployment(experiment, workers, role)
        kopf.append_owner_reference(deployment, owner=body)
        deployments.append(deployment)
    return deployments


async def _edited_deployments(
    body: kopf.Body, experiment: Experiment[BertExperimentSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    """resources and workers edited: the trainer saves and resumes in its new pod (where
    Kueue placed it, when it is queued)."""
    deployments = _deployments(body, experiment, workers)
    await queueing.place_if_admitted(body, deployments, workers.kueue)
    return deployments


lifecycle.register_edit(PLURAL, KIND, _validated, _edited_deployments)


# Cancel the workflow (the trainer saves a checkpoint on its way out), then let go.
lifecycle.cancel_on_delete(PLURAL)
run_events.register(PLURAL)


async def bertexperiment_resync(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    restart: Callable[[], Awaitable[None]],
    **_: Any,
) -> None:
    """Re-derive status from the workflow: heals any missed push (operator down, etc.).
    Registered as a timer by `register_resync` with the configured interval."""
    known_step = latest_step(status)
    await lifecycle.resync_from_workflow(
        KIND,
        name,
        namespaced(namespace, KIND),
        spec,
        status,
        patch,
        meta,
        memo.runtime,
        logger,
        derive=lambda client, workflow_id: derive_status(
            client, workflow_id, known_step, sweep=bool(status.get("trialRuns"))
        ),
        restart=restart,
    )


def register_resync(interval: float) -> None:
    lifecycle.register_resync(PLURAL, bertexperiment_resync, interval, bertexperiment_reconcile)


async def bertexperiment_progress(
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Live `.status.progress` (and a checkpoint a lost signal missed) from the training
    attempt's heartbeat: progress never passes through the workflow, so a run of any length
    adds nothing to its history for it. Registered by `register_progress`."""
    workflow_id = status.get("workflowId")
    if status.get("phase") != Phase.TRAINING.value or not workflow_id:
        return
    client = await memo.runtime.client()
    trials: dict[str, Any] = dict(status.get("trialRuns") or {})
    if not trials:
        patch.status.update(await _live_progress(client, workflow_id, 0, dict(status), logger))
        return
    rows = {}
    for name, row in trials.items():  # a sweep: each training trial's own row
        if row.get("phase") == Phase.TRAINING.value:
            index = int(row.get("index", 0))
            live = await _live_progress(client, workflow_id, index, dict(row), logger)
            rows[name] = {k: v for k, v in live.items() if k in TRIAL_FIELDS}
    if any(rows.values()):
        patch.status["trialRuns"] = {name: row for name, row in rows.items() if row}


async def _live_progress(
    client: Client, workflow_id: str, index: int, current: dict[str, Any], logger: kopf.Logger
) -> dict[str, Any]:
    """What training config `index`'s running attempt has heartbeated beyond `current`."""
    try:
        heartbeat = await training_heartbeat(client, workflow_id, index)
    except Exception as err:  # best effort: the next tick asks again
        logger.debug("progress of %s (%d) not read: %s", workflow_id, index, err)
        return {}
    found: dict[str, Any] = {}
    if heartbeat is None:
        return found
    if heartbeat.progress is not None:
        found |= progress_patch(heartbeat.progress, current, datetime.now(UTC))
    if heartbeat.checkpoint is not None:
        found |= checkpoint_patch(heartbeat.checkpoint, latest_step(current))
    return found


def register_progress(interval: float) -> None:
    kopf.timer(
        GROUP, VERSION, PLURAL, interval=interval, initial_delay=interval, when=sharding.owned
    )(bertexperiment_progress)


async def training_heartbeat(
    client: Client, workflow_id: str, index: int = 0
) -> TrainingHeartbeat | None:
    """The last heartbeat of the coordinator's running training attempt (of its config
    `index`: a sweep's trial); None between attempts or before the first heartbeat."""
    handle = client.get_workflow_handle(training_workflow_id(workflow_id, index))
    # Bounded: a call that never answers would hold this experiment's progress timer forever.
    description = await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
    for pending in description.raw_description.pending_activities:
        payloads = pending.heartbeat_details.payloads
        if pending.activity_type.name == "fine_tune_bert" and payloads:
            decoded = await client.data_converter.decode(payloads, [TrainingHeartbeat])
            heartbeat: TrainingHeartbeat = decoded[0]
            return heartbeat
    return None


async def derive_status(
    client: Client, workflow_id: str, known_step: int, sweep: bool = False
) -> dict[str, Any]:
    """The status fields the workflow's own state implies (describe, result, query)."""
    handle = client.get_workflow_handle(workflow_id, result_type=CoordinatorWorkflowResult)
    state = (await handle.describe()).status
    if state == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        best = result.best
        # A sweep: its best trial's run (the succeeded ones are in result.runs).
        run = next((r for r in result.runs if best and r.trial == best.name), result.runs[0])
        metrics = {
            "trainLoss": run.training.train_loss,
            "evalLoss": run.evaluation.loss,
            "evalAccuracy": run.evaluation.accuracy,
            "numEvalExamples": run.evaluation.num_examples,
        }
        return {
            "phase": Phase.SUCCEEDED.value,
            "completionTime": now(),
            "metrics": metrics,
            **metrics_display(metrics),
        }
    if state != WorkflowExecutionStatus.RUNNING:
        return {
            "phase": lifecycle.closed_phase(state),
            "completionTime": now(),
            "message": f"workflow {workflow_id} ended {state.name if state else 'unknown'}",
        }
    if sweep:
        return {}  # its trials' rows are healed by the progress timer while they train
    # The newest checkpoint from the running attempt's heartbeat (describe), never a query:
    # a query reaching a workflow whose worker just died is answered by replaying it on
    # another worker, and the chaos bench saw that worker's next task then fail with a
    # nondeterminism error for good.
    try:
        heartbeat = await training_heartbeat(client, workflow_id)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return {}  # its training child has not started yet: not a lost workflow
        raise
    if heartbeat is None or heartbeat.checkpoint is None:
        return {}
    return checkpoint_patch(heartbeat.checkpoint, known_step)
