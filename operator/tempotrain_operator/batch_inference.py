"""kopf handlers for BatchInference: resolve the model (a finished BertExperiment's run, or a
name), the inference worker Deployment (`workers` pods, `gpusPerWorker` GPUs each), then the
chunked workflow once. Waiting for an experiment is a condition, not an error."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kopf
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from tempotrain_workers.api import (
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    BatchInferenceResult,
    BatchInferenceSpec,
    BertExperimentSpec,
    InferenceProgress,
    Phase,
    StorageSpec,
    workflow_id_for,
)

from tempotrain_operator import kube, lifecycle, metrics, queueing, run_events, sharding, suspension
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_inference_deployment,
    claim_name,
    worker_config,
    worker_deployment_names,
)
from tempotrain_operator.lifecycle import (
    image_errors,
    namespaced,
    now,
    reject_spec,
    set_condition,
    start_workflow_once,
    storage_errors,
    validation_problems,
    volume_children,
)
from tempotrain_operator.mapping import inference_input, inference_patch, run_id_of
from tempotrain_operator.runtime import Runtime

KIND = "BatchInference"
PLURAL = "batchinferences"
EXPERIMENT_POLL_SECONDS = 15.0


def semantic_errors(spec: BatchInferenceSpec) -> list[str]:
    """Rules the schema cannot state (or that must hold even if the CRD is old)."""
    errors = storage_errors(spec.storage)
    if spec.dataset.file and spec.dataset.config:
        errors.append("dataset.config applies to Hub datasets, not to dataset.file")
    return errors


def _validated(
    spec: kopf.Spec, allowed_images: Sequence[str]
) -> tuple[BatchInferenceSpec | None, str]:
    try:
        model = BatchInferenceSpec.model_validate(dict(spec))
    except ValidationError as err:
        return None, validation_problems(err)
    images = {"spec.image.image": model.image.image}
    problems = semantic_errors(model) + image_errors(images, allowed_images)
    return (None, "; ".join(problems)) if problems else (model, "")


class ModelUnavailable(Exception):
    """The model cannot be had, ever: the reason and message of the Failed condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _experiment_model(
    spec: BatchInferenceSpec, namespace: str
) -> tuple[str, StorageSpec] | None:
    """(run id, storage on the experiment's volumes) of a Succeeded `model.fromExperiment`;
    None while it has not finished yet."""
    source = str(spec.model.from_experiment)
    obj = await kube.get_experiment(namespace, source, "BertExperiment")
    if obj is None:
        raise ModelUnavailable(
            "InvalidSpec",
            f"model.fromExperiment: no BertExperiment {source!r} in namespace {namespace}",
        )
    raw = dict(obj.raw)
    phase = (raw.get("status") or {}).get("phase")
    if phase == Phase.FAILED.value:
        raise ModelUnavailable(
            "ExperimentFailed", f"BertExperiment {source!r} failed: it has no trained model"
        )
    if phase != Phase.SUCCEEDED.value:
        return None
    experiment_spec = BertExperimentSpec.model_validate(raw.get("spec") or {})
    run_id = (raw.get("status") or {}).get("runId") or run_id_of(source, experiment_spec)
    source_experiment = Experiment(name=source, namespace=namespace, uid="", spec=experiment_spec)
    # The trained model is on the experiment's runs volume: read it (and its datasets) there,
    # unless this spec names claims of its own.
    volumes = {}
    for volume in ("snapshots", "runs"):
        ours = getattr(spec.storage, volume)
        volumes[volume] = (
            ours
            if ours.existing_claim
            else ours.model_copy(update={"existing_claim": claim_name(source_experiment, volume)})
        )
    return run_id, StorageSpec(**volumes)


@metrics.timed_reconcile("BatchInference")
async def batchinference_reconcile(
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
    """`rerun`: a Failed job the user asked to run again (`lifecycle.register_retry`): its
    pods come back and its workflow starts again under its id; finished chunks are kept.
    `spec.suspend` holds it (`suspension`); `waiting` as for a BertExperiment."""
    runtime: Runtime = memo.runtime
    namespace = namespaced(namespace, KIND)
    if status.get("phase") in TERMINAL_PHASES and not rerun:
        await lifecycle.release_if_closed(KIND, name, namespace, spec, status, patch, meta, runtime)
        return  # terminal stays terminal
    model, problem = _validated(spec, runtime.settings.allowed_images)
    if model is None and not status.get("workflowId"):
        reject_spec(body, patch, status, meta, problem)
        return
    # What Kueue counts: the pods as the spec builds them (the model does not change them).
    shape = model or BatchInferenceSpec.model_validate(dict(spec))
    workers = worker_config(runtime.settings, uid)
    counted = [
        _deployment(body, Experiment(name=name, namespace=namespace, uid=uid, spec=shape), workers)
    ]
    go, queue = await queueing.hold_or_place(
        KIND, body, spec, status, patch, meta, runtime, counted, waiting=waiting
    )
    if not go:
        return
    resuming = suspension.in_effect(status)
    why = queueing.admitted_words(queue)
    if status.get("workflowId") and not rerun:
        # Started before this operator (re)start: the workflow owns the job, with the model
        # resolved then; the experiment may even be gone since, which must not fail the job.
        if resuming:  # its pods (built then, placed where Kueue says) come back
            if queue is not None and model is not None:
                placed = await _resolved_deployments(
                    body, Experiment(name=name, namespace=namespace, uid=uid, spec=model), workers
                )
                queueing.place(placed, name, queue.placements)
                await kube.roll_out(placed)
            await kube.scale(namespace, worker_deployment_names(name, KIND), shape.workers)
            workflow_id = status["workflowId"]
            await suspension.resume(body, status, patch, meta, runtime, workflow_id, why)
        return
    if model is None:
        reject_spec(body, patch, status, meta, problem)
        return

    model_run: str | None = None
    if model.model.from_experiment:
        try:
            resolved = await _experiment_model(model, namespace)
        except ModelUnavailable as err:
            if err.reason == "InvalidSpec":
                reject_spec(body, patch, status, meta, str(err))
            else:
                patch.status["phase"] = Phase.FAILED.value
                patch.status["message"] = str(err)
                patch.status["completionTime"] = now()
                set_condition(patch, status, meta, "ModelReady", False, err.reason, str(err))
                kopf.warn(body, reason=err.reason, message=str(err))
            return
        if resolved is None:
            _wait_for_experiment(body, patch, status, meta, str(model.model.from_experiment))
        else:
            model_run, storage = resolved
            model = model.model_copy(update={"storage": storage})
            set_condition(
                patch,
                status,
                meta,
                "ModelReady",
                True,
                "ExperimentSucceeded",
                f"run {model_run} of BertExperiment {model.model.from_experiment}",
            )

    experiment = Experiment(name=name, namespace=namespace, uid=uid, spec=model)
    deployments = [_deployment(body, experiment, workers)]
    if queue is not None:
        queueing.place(deployments, name, queue.placements)  # checked on `counted` above
    await kube.create_children(body, [*volume_children(body, experiment), *deployments])

    if rerun or resuming:
        await kube.scale(namespace, worker_deployment_names(name, KIND), model.workers)
    if not status.get("startTime"):
        # Written now: the workflow's own updates may land before this handler returns.
        obj = await kube.experiment_of(body)
        await kube.patch_status(obj, {"phase": Phase.PENDING.value, "startTime": now()})

    await start_workflow_once(
        runtime,
        "BatchInferenceWorkflow",
        inference_input(
            name,
            namespace,
            uid,
            model,
            model_run,
            runtime.settings.status_queue,
            workers.inference_queue,
        ),
        workflow_id_for(KIND, namespace, name, uid),
        workers.inference_queue,
        body=body,
        patch=patch,
        status=status,
        meta=meta,
        logger=logger,
        rerun_failed=rerun,
    )
    if resuming:  # suspended before it started: started just now
        workflow_id = workflow_id_for(KIND, namespace, name, uid)
        await suspension.resume(body, status, patch, meta, runtime, workflow_id, why)


# Registered as plain calls: the name stays the typed function, which register_resync
# hands to the resync timer to start a lost workflow again.
kopf.on.resume(GROUP, VERSION, PLURAL, when=sharding.owned)(batchinference_reconcile)
kopf.on.create(GROUP, VERSION, PLURAL, when=sharding.owned)(batchinference_reconcile)
lifecycle.register_retry(PLURAL, batchinference_reconcile)
lifecycle.register_suspend(PLURAL, batchinference_reconcile)


def _deployment(
    body: kopf.Body, experiment: Experiment[BatchInferenceSpec], workers: WorkerConfig
) -> dict[str, Any]:
    deployment = build_inference_deployment(experiment, workers)
    kopf.append_owner_reference(deployment, owner=body)
    return deployment


async def _edited_deployments(
    body: kopf.Body, experiment: Experiment[BatchInferenceSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    """workers, gpusPerWorker, resources or image edited: chunks in flight are retried
    elsewhere, finished ones stay done."""
    deployments = await _resolved_deployments(body, experiment, workers)
    await queueing.place_if_admitted(body, deployments, workers.kueue)
    return deployments


async def _resolved_deployments(
    body: kopf.Body, experiment: Experiment[BatchInferenceSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    """The job's Deployment as its spec builds it now, its pods mounting the claims the job
    resolved; none when that cannot be known (the source experiment gone or not done)."""
    job = experiment.spec
    if job.model.from_experiment:
        try:
            resolved = await _experiment_model(job, experiment.namespace)
        except ModelUnavailable:
            return []  # the source is gone: the running job keeps the pods it has
        if resolved is None:
            return []  # not started yet: its pods will be built from this spec
        job = job.model_copy(update={"storage": resolved[1]})
        experiment = dataclasses.replace(experiment, spec=job)
    return [_deployment(body, experiment, workers)]


lifecycle.register_edit(PLURAL, KIND, _validated, _edited_deployments)


def _wait_for_experiment(
    body: kopf.Body, patch: kopf.Patch, status: kopf.Status, meta: kopf.Meta, source: str
) -> None:
    """Pending with a ModelReady=False condition; kopf retries this handler until it can go."""
    message = f"waiting for BertExperiment {source!r} to succeed: its trained model is the input"
    # New, or resumed (or admitted) before it started.
    if status.get("phase") in (None, Phase.SUSPENDED, Phase.QUEUED):
        patch.status["phase"] = Phase.PENDING.value
    if not status.get("startTime"):
        patch.status["startTime"] = now()
    patch.status["message"] = message
    set_condition(patch, status, meta, "ModelReady", False, "WaitingForExperiment", message)
    raise kopf.TemporaryError(message, delay=EXPERIMENT_POLL_SECONDS)


# Cancel the workflow; chunks already written stay and count for a later job.
lifecycle.cancel_on_delete(PLURAL)
run_events.register(PLURAL)


async def batchinference_resync(
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
    """Re-derive status from the workflow (heals missed pushes); release the pods at the end."""
    current = dict(status)
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
        derive=lambda client, workflow_id: derive_status(client, workflow_id, current),
        restart=restart,
    )


def register_resync(interval: float) -> None:
    lifecycle.register_resync(PLURAL, batchinference_resync, interval, batchinference_reconcile)


async def derive_status(
    client: Client, workflow_id: str, current: dict[str, Any]
) -> dict[str, Any]:
    handle = client.get_workflow_handle(workflow_id, result_type=BatchInferenceResult)
    state = (await handle.describe()).status
    if state == WorkflowExecutionStatus.RUNNING:
        # Progress comes by push; no query (see bert_experiment.derive_status): a query of a
        # workflow whose worker just died can leave it failing on nondeterminism.
        return {}
    if state == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        tally = result.tally
        progress = InferenceProgress(
            total=result.chunks_total,
            chunk_size=result.chunk_size,
            completed=tally.completed,
            skipped=tally.skipped,
            failed=tally.failed,
            output=result.output,
        )
        return {
            "phase": Phase.SUCCEEDED.value,
            "completionTime": now(),
            **inference_patch(progress, current),
        }
    return {
        "phase": lifecycle.closed_phase(state),
        "completionTime": now(),
        "message": f"workflow {workflow_id} ended {state.name if state else 'unknown'}",
    }
