"""Kueue admits TempoTrain experiments: the operator is the kinds' job integration.

Kueue knows the three kinds as external frameworks and does for them only what it does for
every Workload: it queues, admits, preempts. What its built-in integrations (batch/Job,
RayJob) do on the job's side, this module does for an experiment that carries the label
`kueue.x-k8s.io/queue-name` (kueue's jobframework reconciler, read at v0.17.1):

- one Workload per experiment, named as Kueue names them, controller-owned by it, with a pod
  set per worker Deployment or Ray group (their requests) and the priority of its
  WorkloadPriorityClass label;
- until it is admitted the experiment is held as a suspended one is (`suspension`): phase
  `Queued` with Kueue's own words ("LocalQueue x doesn't exist", "insufficient quota");
- admitted: the assigned flavors' node labels and tolerations go into its pods, and it runs;
- evicted (preempted, deactivated): it saves a checkpoint and stops like a suspended one, and
  only once its compute is released is the Workload's reservation cleared, which frees the
  quota for the one that preempted it; admitted again, it resumes from that checkpoint;
- over: the Workload is marked Finished and its finalizer removed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
import kr8s
from kr8s.asyncio.objects import new_class
from tempotrain_workers.api import (
    API_VERSION,
    GROUP,
    TERMINAL_PHASES,
    VERSION,
    Phase,
)

from tempotrain_operator import conditions, indexes, kube, lifecycle, sharding, suspension
from tempotrain_operator.children import TEMPLATE_HASH, template_hash
from tempotrain_operator.runtime import Runtime

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
PODSET_LABEL = "kueue.x-k8s.io/podset"
WORKLOAD_FINALIZER = "kueue.x-k8s.io/resource-in-use"
KUEUE_API = "kueue.x-k8s.io/v1beta2"

Workload = new_class(f"Workload.{KUEUE_API}", namespaced=True, plural="workloads")
ResourceFlavor = new_class(
    f"ResourceFlavor.{KUEUE_API}", namespaced=False, plural="resourceflavors"
)
WorkloadPriorityClass = new_class(
    f"WorkloadPriorityClass.{KUEUE_API}", namespaced=False, plural="workloadpriorityclasses"
)

# Eviction reasons after which Kueue requeues the Workload at once (Requeued=True).
REQUEUED_AFTER = frozenset({"Preempted", "NodeFailures"})


def queue_name(meta: Mapping[str, Any]) -> str | None:
    return (meta.get("labels") or {}).get(QUEUE_LABEL) or None


def workload_name(kind: str, name: str, uid: str) -> str:
    """Kueue's own name for a job's Workload (pkg/controller/jobframework/workload_names.go),
    so that `kubectl get workloads` reads as it does for its integrations."""
    prefix = f"{kind.lower()}-{name}"[:247]
    digest = hashlib.sha1(f"{kind}\n{GROUP}\n{name}\n{uid}".encode()).hexdigest()[:5]
    return f"{prefix}-{digest}"


@dataclass(frozen=True)
class Admission:
    """What a Workload says about the experiment it stands for."""

    admitted: bool
    evicted: bool = False
    reserved: bool = False  # holds quota (QuotaReserved=True)
    finished: bool = False
    reason: str = ""
    message: str = ""
    cluster_queue: str | None = None
    assignments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """Whether the experiment must not run now."""
        return not self.admitted or self.evicted


def admission_of(workload: Mapping[str, Any] | None) -> Admission:
    """Admitted only with Admitted=True and no eviction pending; the words Kueue gave for why
    not (its QuotaReserved message while pending, its Evicted message when evicted)."""
    if workload is None:
        return Admission(admitted=False, message="its Workload is being created")
    status = workload.get("status") or {}
    admission = status.get("admission") or {}
    evicted = conditions.is_true(status, "Evicted")
    pending = conditions.find(status, "QuotaReserved")
    explaining = conditions.find(status, "Evicted") if evicted else pending
    queue = (workload.get("spec") or {}).get("queueName")
    return Admission(
        admitted=conditions.is_true(status, "Admitted"),
        evicted=evicted,
        reserved=conditions.is_true(status, "QuotaReserved"),
        finished=conditions.is_true(status, "Finished"),
        reason=str(explaining.get("reason") or "Pending"),
        message=str(explaining.get("message") or f"waiting in LocalQueue {queue}"),
        cluster_queue=admission.get("clusterQueue"),
        assignments=list(admission.get("podSetAssignments") or []),
    )


# -- the Workload ----------------------------------------------------------------------------


def pod_sets(manifests: list[dict[str, Any]], experiment_name: str) -> list[dict[str, Any]]:
    """One pod set per worker Deployment (named by its role) and per Ray group: what Kueue
    counts against the quota. The templates are the pods' own (requests, node selector,
    tolerations: what flavor assignment looks at)."""
    sets: list[dict[str, Any]] = []
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            role = manifest["metadata"]["name"].removeprefix(f"{experiment_name}-")
            sets.append(_pod_set(role, manifest["spec"]["replicas"], manifest["spec"]["template"]))
        elif manifest["kind"] == "RayCluster":
            ray = manifest["spec"]
            sets.append(_pod_set("head", 1, ray["headGroupSpec"]["template"]))
            for group in ray.get("workerGroupSpecs") or []:
                sets.append(_pod_set(group["groupName"], group["replicas"], group["template"]))
    return sets


def _pod_set(name: str, count: int, template: Mapping[str, Any]) -> dict[str, Any]:
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    return {
        "name": name,
        "count": count,
        "template": {"metadata": {"labels": labels}, "spec": dict(template["spec"])},
    }


def build_workload(
    body: Mapping[str, Any],
    sets: list[dict[str, Any]],
    priority: tuple[str, int] | None,
) -> dict[str, Any]:
    meta = body["metadata"]
    kind, name, uid = str(body["kind"]), str(meta["name"]), str(meta["uid"])
    spec: dict[str, Any] = {"queueName": queue_name(meta), "podSets": sets}
    if priority is not None:
        spec["priorityClassRef"] = {
            "group": "kueue.x-k8s.io",
            "kind": "WorkloadPriorityClass",
            "name": priority[0],
        }
        spec["priority"] = priority[1]
    return {
        "apiVersion": KUEUE_API,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(kind, name, uid),
            "namespace": meta["namespace"],
            "labels": {JOB_UID_LABEL: uid},
            "finalizers": [WORKLOAD_FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def release_patch(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The `/status` merge patch that gives back an evicted Workload's quota once its pods
    are gone, as Kueue's integrations write it (workload.UnsetQuotaReservationWithCondition):
    no admission, QuotaReserved=False Pending, Admitted=False NoReservation, and Requeued."""
    evicted = conditions.find(workload.get("status"), "Evicted")
    reason = str(evicted.get("reason") or "Evicted")
    message = str(evicted.get("message") or "evicted")
    generation = (workload.get("metadata") or {}).get("generation")
    current = (workload.get("status") or {}).get("conditions")
    updated = conditions.upsert(current, "QuotaReserved", False, "Pending", message, generation)
    updated = conditions.upsert(
        updated, "Admitted", False, "NoReservation", "The workload has no reservation", generation
    )
    updated = conditions.upsert(
        updated, "Requeued", reason in REQUEUED_AFTER, reason, message, generation
    )
    return {
        "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
        "status": {"admission": None, "conditions": updated},
    }


def finish_patch(workload: Mapping[str, Any], phase: str, message: str) -> dict[str, Any]:
    """Finished=True (Succeeded, or Failed for any other end): Kueue frees the quota."""
    reason = "Succeeded" if phase == Phase.SUCCEEDED else "Failed"
    generation = (workload.get("metadata") or {}).get("generation")
    current = (workload.get("status") or {}).get("conditions")
    finished = conditions.upsert(current, "Finished", True, reason, message, generation)
    return {
        "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
        "status": {"conditions": finished},
    }


# -- placement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """What an admitted pod set's flavors add to its pods."""

    node_labels: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


class PlacementConflict(ValueError):
    """A flavor's node label contradicts the pod's own node selector: it can never start."""


def placements(
    assignments: list[dict[str, Any]], flavors: Mapping[str, Mapping[str, Any]]
) -> dict[str, Placement]:
    """Per pod set: the node labels and tolerations of the flavors it was assigned."""
    result: dict[str, Placement] = {}
    for assignment in assignments:
        labels: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        for flavor_name in sorted(set((assignment.get("flavors") or {}).values())):
            flavor = (flavors.get(flavor_name) or {}).get("spec") or {}
            labels.update(flavor.get("nodeLabels") or {})
            tolerations += [t for t in flavor.get("tolerations") or [] if t not in tolerations]
        result[str(assignment["name"])] = Placement(labels, tolerations)
    return result


def place_template(template: dict[str, Any], pod_set: str, placement: Placement) -> None:
    """Into one pod template: the flavor's node labels (a label the pod already selects with
    another value is a conflict), its tolerations, and Kueue's pod-set label."""
    spec = template.setdefault("spec", {})
    selector = dict(spec.get("nodeSelector") or {})
    for key, value in placement.node_labels.items():
        if selector.get(key, value) != value:
            raise PlacementConflict(
                f"pod set {pod_set}: the flavor's node label {key}={value} contradicts the "
                f"pods' nodeSelector {key}={selector[key]}"
            )
        selector[key] = value
    if selector:
        spec["nodeSelector"] = selector
    tolerations = list(spec.get("tolerations") or [])
    tolerations += [t for t in placement.tolerations if t not in tolerations]
    if tolerations:
        spec["tolerations"] = tolerations
    template.setdefault("metadata", {}).setdefault("labels", {})[PODSET_LABEL] = pod_set


def place(
    manifests: list[dict[str, Any]], experiment_name: str, by_pod_set: Mapping[str, Placement]
) -> None:
    """The admitted placements into the experiment's Deployments and RayCluster (in place);
    a Deployment's template hash follows, so an existing one is rolled to it."""
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            role = manifest["metadata"]["name"].removeprefix(f"{experiment_name}-")
            template = manifest["spec"]["template"]
            place_template(template, role, by_pod_set.get(role, Placement()))
            manifest["metadata"].setdefault("annotations", {})[TEMPLATE_HASH] = template_hash(
                template
            )
        elif manifest["kind"] == "RayCluster":
            ray = manifest["spec"]
            place_template(
                ray["headGroupSpec"]["template"], "head", by_pod_set.get("head", Placement())
            )
            for group in ray.get("workerGroupSpecs") or []:
                name = group["groupName"]
                place_template(group["template"], name, by_pod_set.get(name, Placement()))


# -- the API calls ----------------------------------------------------------------------------


def workload_name_of(body: Mapping[str, Any]) -> str:
    meta = body["metadata"]
    return workload_name(str(body["kind"]), str(meta["name"]), str(meta["uid"]))


async def workload_of(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The experiment's Workload as it is now; None when it has none."""
    try:
        found = await Workload.get(
            workload_name_of(body),
            namespace=body["metadata"]["namespace"],
            api=await kube.client(),
        )
    except kr8s.NotFoundError:
        return None
    return dict(found.raw)


async def priority_of(meta: Mapping[str, Any]) -> tuple[str, int] | None:
    """The WorkloadPriorityClass the experiment's label names, with its value; raises
    LookupError when it names one that does not exist."""
    name = (meta.get("labels") or {}).get(PRIORITY_LABEL)
    if not name:
        return None
    try:
        found = await WorkloadPriorityClass.get(name, api=await kube.client())
    except kr8s.NotFoundError as err:
        raise LookupError(
            f"WorkloadPriorityClass {name} (label {PRIORITY_LABEL}) not found"
        ) from err
    return name, int(dict(found.raw).get("value") or 0)


async def ensure_workload(
    body: Mapping[str, Any], manifests: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The experiment's Workload, created when missing (another reconcile's creation is
    found, not duplicated). A finished one belongs to a run that is over: a retried
    experiment's. It is deleted, and None returned until it is gone (a new one of the same
    name can only be created then)."""
    meta = body["metadata"]
    existing = await workload_of(body)
    if existing is not None:
        if not conditions.is_true(existing.get("status"), "Finished"):
            return existing
        await drop_finalizer(existing)
        with contextlib.suppress(kr8s.NotFoundError):
            await (await kube.bind(Workload, existing)).delete()
        return None
    manifest = build_workload(body, pod_sets(manifests, meta["name"]), await priority_of(meta))
    workload = await kube.bind(Workload, manifest)
    try:
        await workload.create()
    except kr8s.ServerError as err:
        if err.response is None or err.response.status_code != 409:
            raise
        again = await workload_of(body)
        if again is None:
            raise
        return again
    return dict(workload.raw)


async def flavors_of(assignments: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = {f for a in assignments for f in (a.get("flavors") or {}).values()}
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        flavor = await ResourceFlavor.get(name, api=await kube.client())
        found[name] = dict(flavor.raw)
    return found


async def release_reservation(workload: Mapping[str, Any]) -> bool:
    """Clear an evicted Workload's reservation (its pods are gone); False when there is none
    to clear (Kueue's or an earlier call's doing)."""
    status = workload.get("status") or {}
    if not (conditions.is_true(status, "Evicted") and status.get("admission")):
        return False
    obj = await kube.bind(Workload, dict(workload))
    await obj.patch(release_patch(workload), subresource="status", type="merge")
    return True


async def finish(workload: Mapping[str, Any], phase: str, message: str) -> None:
    """Finished, then without our finalizer (Kueue frees the quota on Finished; the
    finalizer only kept the Workload while the experiment could still use it)."""
    obj = await kube.bind(Workload, dict(workload))
    if not conditions.is_true(workload.get("status"), "Finished"):
        await obj.patch(finish_patch(workload, phase, message), subresource="status", type="merge")
        await obj.refresh()
    await drop_finalizer(dict(obj.raw))


async def drop_finalizer(workload: Mapping[str, Any]) -> None:
    finalizers = list((workload.get("metadata") or {}).get("finalizers") or [])
    if WORKLOAD_FINALIZER not in finalizers:
        return
    kept = [f for f in finalizers if f != WORKLOAD_FINALIZER]
    obj = await kube.bind(Workload, dict(workload))
    patch = {
        "metadata": {
            "finalizers": kept,
            "resourceVersion": workload["metadata"]["resourceVersion"],
        }
    }
    with contextlib.suppress(kr8s.NotFoundError):
        await obj.patch(patch, type="merge")


# -- the experiment's side -----------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """Where a queued experiment stands: Kueue's verdict, its Workload, and (admitted) where
    its pods go."""

    admission: Admission
    workload: dict[str, Any] | None
    placements: dict[str, Placement] = field(default_factory=dict)


async def gate(
    body: kopf.Body,
    manifests: list[dict[str, Any]],
    enabled: bool,
    *,
    create: bool = True,
) -> Gate | None:
    """None when Kueue has no say (no queue label, or the integration is off); else the
    experiment's Workload (made now if missing, unless not `create`) and what it says."""
    meta = body["metadata"]
    queue = queue_name(meta)
    if queue is None:
        return None
    if not enabled:
        message = (
            f"label {QUEUE_LABEL}={queue} ignored: this operator runs without its Kueue "
            "integration (the chart's kueue.enabled)"
        )
        kopf.warn(body, reason="QueueIgnored", message=message)
        return None
    workload: dict[str, Any] | None
    if create:
        try:
            workload = await ensure_workload(body, manifests)
        except LookupError as err:  # a priority class that does not exist (yet)
            return Gate(
                Admission(admitted=False, reason="PriorityClassNotFound", message=str(err)), None
            )
    else:  # only what is there; a finished one belongs to a run that is over
        workload = await workload_of(body)
        if workload is None or conditions.is_true(workload.get("status"), "Finished"):
            return None
    admission = admission_of(workload)
    if admission.holds or workload is None:
        return Gate(admission, workload)
    flavors = await flavors_of(admission.assignments)
    return Gate(admission, workload, placements(admission.assignments, flavors))


def queued_hold(admission: Admission) -> suspension.Hold:
    """The hold Kueue puts on an experiment, in Kueue's words."""
    stopped = admission.reason if admission.evicted else "Queued"
    why = f"Kueue: {admission.message}" if admission.message else "waiting for Kueue"
    return suspension.Hold(
        Phase.QUEUED, "Queued", stopped, f"{why}; it runs once its Workload is admitted"
    )


def hold_for(spec: Mapping[str, Any], queue: Gate | None) -> suspension.Hold | None:
    """What holds the experiment now, if anything: the user first, then Kueue."""
    if suspension.wanted(spec):
        return suspension.BY_USER
    if queue is not None and queue.admission.holds:
        return queued_hold(queue.admission)
    return None


async def after_hold(queue: Gate | None, namespace: str, name: str) -> None:
    """Once an evicted experiment's pods are all gone (not only scaled away: a terminating
    trainer still saves and still holds its node): its quota back to Kueue, as its own
    integrations wait for a job to have no active pods. Until then, and on a conflict (Kueue
    wrote meanwhile), the queue timer's next look does it."""
    if queue is None or queue.workload is None or not queue.admission.evicted:
        return
    pods = indexes.pods_of(namespace, name)
    if any((pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for pod in pods):
        return
    with contextlib.suppress(kr8s.ServerError):
        await release_reservation(queue.workload)


def admitted_words(queue: Gate | None) -> str | None:
    if queue is None:
        return None
    return f"admitted by Kueue to ClusterQueue {queue.admission.cluster_queue}"


FINISHED_CONDITION = "WorkloadFinished"  # on the experiment: nothing left to follow


def workload_finished(status: Mapping[str, Any]) -> bool:
    return conditions.is_true(status, FINISHED_CONDITION)


def register_queue_timer(
    plural: str, reconcile: Callable[..., Awaitable[None]], interval: float
) -> None:
    """Follow the Workloads of queued experiments (those with the queue label): admission,
    eviction and Kueue's messages reach the experiment within `interval` seconds; an
    experiment that is over finishes its Workload."""

    async def follow_queue(**kwargs: Any) -> None:
        spec, status, meta, body = kwargs["spec"], kwargs["status"], kwargs["meta"], kwargs["body"]
        phase = status.get("phase")
        workload = await workload_of(body)
        if phase in TERMINAL_PHASES:
            words = f"it ended {phase} before it had a Workload"  # a spec refused at once
            if workload is not None:
                await finish(workload, str(phase), str(status.get("message") or phase))
                words = f"Workload {workload_name_of(body)} finished: its quota is free"
            current = kwargs["patch"].status.get("conditions") or status.get("conditions")
            kwargs["patch"].status["conditions"] = conditions.upsert(
                current,
                FINISHED_CONDITION,
                True,
                "Succeeded" if phase == Phase.SUCCEEDED else "Failed",
                words,
                meta.get("generation"),
            )
            return
        if phase == Phase.TERMINATING:
            return
        arguments = {"started": datetime.now(UTC), **kwargs}
        admission = admission_of(workload)
        holds = suspension.wanted(spec) or admission.holds
        if workload is None or not suspension.settled(holds, status):
            # The reconcile waits (raises) while a workflow saves: the next tick looks again,
            # and no signal is sent twice.
            with contextlib.suppress(kopf.TemporaryError):
                await reconcile(**arguments)
            return
        if not (holds and suspension.held(status)) or suspension.wanted(spec):
            return
        if admission.evicted:
            await after_hold(Gate(admission, workload), str(meta["namespace"]), str(meta["name"]))
        message = suspension.held_message(queued_hold(admission), status)
        if phase == Phase.QUEUED and status.get("message") != message:
            kwargs["patch"].status["message"] = message  # Kueue's words changed

    async def finish_on_delete(body: kopf.Body, **_: Any) -> None:
        await forget(body)

    kopf.on.delete(
        GROUP,
        VERSION,
        plural,
        id="finish-workload",
        labels={QUEUE_LABEL: kopf.PRESENT},
        when=sharding.owned,
    )(finish_on_delete)
    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id="follow-queue",
        interval=interval,
        initial_delay=interval,
        labels={QUEUE_LABEL: kopf.PRESENT},
        when=lambda status, uid, **_: sharding.owned(uid) and not workload_finished(status),
    )(follow_queue)


async def forget(body: Mapping[str, Any]) -> None:
    """The experiment is being deleted: its Workload finishes and loses our finalizer (the
    garbage collector then deletes it with its owner)."""
    workload = await workload_of(body)
    if workload is not None:
        await finish(workload, Phase.CANCELLED.value, "its experiment was deleted")


async def place_if_admitted(
    body: kopf.Body, manifests: list[dict[str, Any]], enabled: bool
) -> None:
    """An edit's rebuilt Deployments keep where Kueue placed them."""
    queue = await gate(body, manifests, enabled, create=False)
    if queue is not None and not queue.admission.holds:
        place(manifests, str(body["metadata"]["name"]), queue.placements)


async def hold_or_place(
    kind: str,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    runtime: Runtime,
    compute: list[dict[str, Any]],
    *,
    waiting: bool,
) -> tuple[bool, Gate | None]:
    """Every kind's reconcile asks here first: whether its compute may run now, and Kueue's
    say. Held (by spec.suspend or by Kueue): it is suspended, and once an evicted one is,
    its quota goes back; False. Free to run: an admitted one's `compute` manifests are
    placed (in place) on its flavors' nodes; True. A placement that can never start fails
    the experiment, as Kueue's own integrations fail a job (FailedToStart)."""
    name, namespace = str(meta["name"]), str(meta["namespace"])
    queue = await gate(body, compute, runtime.settings.kueue)
    hold = hold_for(spec, queue)
    if hold is not None:
        held = await suspension.suspend(
            kind, body, spec, status, patch, meta, name, namespace, runtime,
            waiting=waiting, hold=hold,
        )  # fmt: skip
        if held:
            await after_hold(queue, namespace, name)
        return False, queue
    if queue is not None:
        try:
            place(compute, name, queue.placements)
        except PlacementConflict as err:
            lifecycle.reject_spec(body, patch, status, meta, f"cannot start where admitted: {err}")
            return False, queue
    return True, queue
