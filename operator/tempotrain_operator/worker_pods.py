"""Why an experiment's worker pods are not running, read from their status: what a user would
otherwise dig out of `kubectl describe pod` — an image that cannot be had, a claim that is not
bound or no node with room, a container that cannot be created or keeps crashing. It becomes
the condition `WorkersReady` on the experiment, never a silent Pending."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tempotrain_operator.conditions import Verdict, find, is_true, newest_event

CONDITION = "WorkersReady"
IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
CONTAINER_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
MOUNT_REASONS = {"FailedMount", "FailedAttachVolume"}
# A volume may take a few seconds to attach: only a pod still creating after this long is
# asked about (its events: a Secret or claim that is missing, a volume that will not attach).
STUCK_AFTER = timedelta(seconds=30)


def workers_health(pods: list[dict[str, Any]]) -> Verdict | None:
    """The first problem among the pods (by name), or ready when every pod runs and is
    ready; None when there is nothing to say yet (no pods, or pods still starting)."""
    live = sorted(
        (p for p in pods if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: str(p["metadata"]["name"]),
    )
    if not live:
        return None
    for pod in live:
        problem = _problem(pod)
        if problem is not None:
            return problem
    if all(_ready(pod) for pod in live):
        return Verdict(True, "Running", f"{len(live)} worker pod(s) running")
    return None


def _problem(pod: dict[str, Any]) -> Verdict | None:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for container in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        detail = f"pod {name}: {reason}: {waiting.get('message') or container.get('image')}"
        if reason in IMAGE_REASONS:
            return Verdict(False, "ImageUnavailable", detail)
        if reason in CONTAINER_REASONS:
            return Verdict(False, "ContainerNotCreated", detail)
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            return Verdict(
                False,
                "CrashLoopBackOff",
                f"pod {name}: its container keeps exiting (last exit code "
                f"{last.get('exitCode')}, {last.get('reason')}); `kubectl logs --previous {name}`",
            )
    scheduled = find(pod.get("status"), "PodScheduled")
    if scheduled.get("status") == "False":
        # The scheduler's own words: unbound claims, insufficient cpu, untolerated taints.
        return Verdict(False, "Unschedulable", f"pod {name}: {scheduled.get('message')}")
    return None


def _ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and is_true(
        pod.get("status"), "Ready"
    )


def stuck_creating(pods: list[dict[str, Any]], now: datetime) -> list[str]:
    """Live pods scheduled more than STUCK_AFTER ago whose containers are still being
    created: the kubelet is waiting on their volumes (nothing in the pod status says why)."""
    stuck = []
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        scheduled = find(pod.get("status"), "PodScheduled")
        if scheduled.get("status") != "True":
            continue
        since = datetime.fromisoformat(str(scheduled.get("lastTransitionTime")))
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        creating = all(
            ((c.get("state") or {}).get("waiting") or {}).get("reason", "ContainerCreating")
            == "ContainerCreating"
            for c in statuses
        )
        if creating and now - since > STUCK_AFTER:
            stuck.append(str(pod["metadata"]["name"]))
    return sorted(stuck)


def mount_problem(pod_name: str, events: list[dict[str, Any]]) -> Verdict | None:
    """The kubelet's newest complaint about the pod's volumes, from its Warning events."""
    newest = newest_event(events, MOUNT_REASONS)
    if newest is None:
        return None
    return Verdict(
        False, "VolumeNotMounted", f"pod {pod_name}: {newest.get('reason')}: {newest['message']}"
    )
