"""kopf handlers for Cifar10Scaling: volumes, the Ray driver worker, one RayCluster sized for
the largest scale (owned by the CR), then the scaling workflow once the cluster is ready."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from tempotrain_workers.api import (
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    Cifar10ScalingResult,
    Cifar10ScalingSpec,
    Phase,
    RaySpec,
    workflow_id_for,
)

from tempotrain_operator import (
    compute,
    kube,
    lifecycle,
    metrics,
    queueing,
    run_events,
    sharding,
    suspension,
)
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_worker_deployment,
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
from tempotrain_operator.mapping import scaling_input, scaling_results_patch
from tempotrain_operator.ray_children import (
    build_ray_cluster,
    is_ready,
    jobs_address,
    ray_cluster_name,
)
from tempotrain_operator.runtime import Runtime

KIND = "Cifar10Scaling"
PLURAL = "cifar10scalings"
RAY_POLL_SECONDS = 2.0


def semantic_errors(spec: Cifar10ScalingSpec) -> list[str]:
    """Rules the schema cannot state (or that must hold even if the CRD is old)."""
    errors = []
    if not spec.use_gpu and any(s.gpus_per_worker for s in spec.scales):
        errors.append("a scale sets gpusPerWorker > 0 but useGpu is false")
    errors += storage_errors(spec.storage)
    return errors


def _validated(
    spec: kopf.Spec, allowed_images: Sequence[str]
) -> tuple[Cifar10ScalingSpec | None, str]:
    try:
        model = Cifar10ScalingSpec.model_validate(dict(spec))
    except ValidationError as err:
        return None, validation_problems(err)
    images = {"spec.workers.image": model.workers.image, "spec.ray.image": model.ray.image}
    problems = semantic_errors(model) + image_errors(images, allowed_images)
    return (None, "; ".join(problems)) if problems else (model, "")


@metrics.timed_reconcile("Cifar10Scaling")
async def cifar10scaling_reconcile(
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
    started: datetime,
    rerun: bool = False,
    waiting: bool = True,
    **_: Any,
) -> None:
    """`rerun`: a Failed run the user asked to run again (`lifecycle.register_retry`): its
    driver and Ray cluster come back and its workflow starts again under its id. `spec.suspend`
    holds it (`suspension`): its RayCluster goes, and comes back on resume before the
    workflow is told to go on; `waiting` as for a BertExperiment."""
    runtime: Runtime = memo.runtime
    namespace = namespaced(namespace, KIND)
    if status.get("phase") in TERMINAL_PHASES and not rerun:
        await lifecycle.release_if_closed(KIND, name, namespace, spec, status, patch, meta, runtime)
        return  # terminal stays terminal
    model, problem = _validated(spec, runtime.settings.allowed_images)
    if model is None:
        reject_spec(body, patch, status, meta, problem)
        return
    experiment = Experiment(name=name, namespace=namespace, uid=uid, spec=model)
    workers = worker_config(runtime.settings, uid)
    compute_children = _compute(body, experiment, workers)
    go, queue = await queueing.hold_or_place(
        KIND, body, spec, status, patch, meta, runtime, compute_children, waiting=waiting
    )
    if not go:
        return
    resuming = suspension.in_effect(status)
    if not await _ensure_children(body, experiment, compute_children):
        message = (
            "this cluster has no ray.io/v1 RayCluster API: install the KubeRay operator "
            "(its CRDs) or point spec.ray.address at an existing Ray cluster"
        )
        patch.status["phase"] = Phase.FAILED.value
        patch.status["message"] = message
        set_condition(patch, status, meta, "RayClusterReady", False, "KubeRayMissing", message)
        kopf.warn(body, reason="KubeRayMissing", message=message)
        return

    if rerun or resuming:
        await kube.scale(namespace, worker_deployment_names(name, KIND), 1)
    if not status.get("startTime"):
        # Written now: the workflow's own updates may land before this handler returns.
        obj = await kube.experiment_of(body)
        pending = {
            "phase": Phase.PENDING.value,
            "startTime": now(),
            "done": f"0/{len(model.scales)}",
        }
        if not model.ray.address:
            pending["rayCluster"] = ray_cluster_name(name)
        await kube.patch_status(obj, pending)

    if status.get("workflowId") and status.get("rayAddress") and not (rerun or resuming):
        # Started before (operator restart): the workflow owns the run now. A RayCluster that
        # is briefly not ready (head pod restarting) must not fail it; Ray Train retries.
        address: str | None = status["rayAddress"]
    else:
        address = await _ray_address(experiment, runtime, patch, status, meta, started)
    if address is None:  # gave up waiting (no workflow): Failed, reason in RayClusterReady
        await compute.release(KIND, namespace, name, dict(spec))
        return
    patch.status["rayAddress"] = address
    await start_workflow_once(
        runtime,
        "Cifar10ScalingWorkflow",
        scaling_input(name, namespace, uid, model, address, runtime.settings.status_queue),
        workflow_id_for(KIND, namespace, name, uid),
        workers.ray_queue,
        body=body,
        patch=patch,
        status=status,
        meta=meta,
        logger=logger,
        rerun_failed=rerun,
    )
    patch.status["runId"] = name
    if resuming:
        workflow_id = workflow_id_for(KIND, namespace, name, uid)
        why = queueing.admitted_words(queue)
        await suspension.resume(body, status, patch, meta, runtime, workflow_id, why)


# Registered as plain calls: the name stays the typed function, which register_resync
# hands to the resync timer to start a lost workflow again.
kopf.on.resume(GROUP, VERSION, PLURAL, when=sharding.owned)(cifar10scaling_reconcile)
kopf.on.create(GROUP, VERSION, PLURAL, when=sharding.owned)(cifar10scaling_reconcile)
lifecycle.register_retry(PLURAL, cifar10scaling_reconcile)
lifecycle.register_suspend(PLURAL, cifar10scaling_reconcile)


async def _ray_address(
    experiment: Experiment[Cifar10ScalingSpec],
    runtime: Runtime,
    patch: kopf.Patch,
    status: kopf.Status,
    meta: kopf.Meta,
    started: datetime,
) -> str | None:
    """Where the workflow finds Ray: the spec's address, else our RayCluster once it is ready
    (kopf retries this handler while it is not; bounded by ray.readyTimeoutSeconds)."""
    ray_spec: RaySpec = experiment.spec.ray
    if ray_spec.address:
        return ray_spec.address
    cluster_name = ray_cluster_name(experiment.name)
    cluster = await kube.get_object("RayCluster", experiment.namespace, cluster_name)
    raw = dict(cluster.raw) if cluster is not None else {}
    if not is_ready(raw):
        state = (raw.get("status") or {}).get("state") or "not reported yet"
        waited = (datetime.now(UTC) - started).total_seconds()
        if waited > ray_spec.ready_timeout_seconds:
            message = (
                f"RayCluster {cluster_name} not ready after {ray_spec.ready_timeout_seconds}s "
                f"(state: {state}); is the KubeRay operator running?"
            )
            patch.status["phase"] = Phase.FAILED.value
            patch.status["message"] = message
            patch.status["completionTime"] = now()
            set_condition(patch, status, meta, "RayClusterReady", False, "Timeout", message)
            return None
        set_condition(
            patch,
            status,
            meta,
            "RayClusterReady",
            False,
            "Provisioning",
            f"waiting for RayCluster {cluster_name} (state: {state})",
        )
        raise kopf.TemporaryError(f"RayCluster {cluster_name} not ready", delay=RAY_POLL_SECONDS)
    set_condition(
        patch, status, meta, "RayClusterReady", True, "Ready", f"RayCluster {cluster_name} ready"
    )
    return runtime.settings.ray_address or jobs_address(experiment.name, experiment.namespace)


def _compute(
    body: kopf.Body, experiment: Experiment[Cifar10ScalingSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    """The driver Deployment, and the RayCluster unless spec.ray.address names one."""
    children = [_driver(body, experiment, workers)]
    if not experiment.spec.ray.address:
        cluster = build_ray_cluster(experiment, workers.image, workers.pod_defaults)
        kopf.append_owner_reference(cluster, owner=body)
        children.append(cluster)
    return children


async def _ensure_children(
    body: kopf.Body, experiment: Experiment[Cifar10ScalingSpec], compute: list[dict[str, Any]]
) -> bool:
    """Create what is missing; False when the cluster has no RayCluster API (no KubeRay)."""
    clusters = [c for c in compute if c["kind"] == "RayCluster"]
    others = [c for c in compute if c["kind"] != "RayCluster"]
    await kube.create_children(body, [*volume_children(body, experiment), *others])
    if not clusters:
        return True
    try:
        await kube.create_children(body, clusters)
    except kopf.TemporaryError as err:
        if kube.is_not_found(err.__cause__):  # no ray.io/v1 API: retrying will not help
            return False
        raise
    return True


def _driver(
    body: kopf.Body, experiment: Experiment[Cifar10ScalingSpec], workers: WorkerConfig
) -> dict[str, Any]:
    driver = build_worker_deployment(experiment, workers, "ray-driver")
    kopf.append_owner_reference(driver, owner=body)
    return driver


async def _edited_deployments(
    body: kopf.Body, experiment: Experiment[Cifar10ScalingSpec], workers: WorkerConfig
) -> list[dict[str, Any]]:
    """workers edited (the driver pod's image, env, pull secrets); the Ray cluster's shape is
    part of what the run is (immutable)."""
    driver = [_driver(body, experiment, workers)]
    await queueing.place_if_admitted(body, driver, workers.kueue)
    return driver


lifecycle.register_edit(PLURAL, KIND, _validated, _edited_deployments)


# Cancel the workflow (the driver stops Ray Train); the RayCluster goes by ownership.
lifecycle.cancel_on_delete(PLURAL)
run_events.register(PLURAL)


async def cifar10scaling_resync(
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
    """Re-derive a finished workflow's outcome (heals missed pushes); release resources."""
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
        derive=derive_status,
        restart=restart,
    )


def register_resync(interval: float) -> None:
    lifecycle.register_resync(PLURAL, cifar10scaling_resync, interval, cifar10scaling_reconcile)


async def derive_status(client: Client, workflow_id: str) -> dict[str, Any]:
    handle = client.get_workflow_handle(workflow_id, result_type=Cifar10ScalingResult)
    state = (await handle.describe()).status
    if state == WorkflowExecutionStatus.RUNNING:
        return {}
    if state == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        return {
            "phase": Phase.SUCCEEDED.value,
            "completionTime": now(),
            "done": f"{len(result.scales)}/{len(result.scales)}",
            **scaling_results_patch(result.scales),
        }
    return {
        "phase": lifecycle.closed_phase(state),
        "completionTime": now(),
        "message": f"workflow {workflow_id} ended {state.name if state else 'unknown'}",
    }
