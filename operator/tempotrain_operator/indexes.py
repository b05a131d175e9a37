"""What the operator's own watches keep of the experiments' worker pods, of the claims and of
Warning events (kopf indexes), so that the health checks of the resync timers, the delete
handler and the queue read memory instead of asking the apiserver: a LIST by label of pods,
or by field of one claim's events, makes it filter every pod, or every event, of the
namespace. Per experiment per minute that grew with the square of the experiments: at 1,400
of them (claims left Pending by a slow provisioner) a LIST of events took the apiserver 1.4 s.
And the claims were a GET each per resync until bound.

The pods and events watches are filtered by the server (the experiment label;
`type=Warning`); claims are all watched (a user's existingClaim has no label of ours). kopf
runs no experiment handler before the indexes hold what the first listings gave: an empty
answer means there is nothing, never that it has not been seen yet."""

from __future__ import annotations

from typing import Any, TypeVar

import kopf

from tempotrain_operator.children import EXPERIMENT_LABEL

# Warnings about these kinds say why a claim stays Pending or a pod cannot mount a volume.
WARNED_KINDS = frozenset({"Pod", "PersistentVolumeClaim"})

PodKey = tuple[str, str]  # (namespace, experiment name)
ClaimKey = tuple[str, str]  # (namespace, claim name)
EventKey = tuple[str, str, str]  # (namespace, kind, name) of the object the event is about
Key = TypeVar("Key", PodKey, EventKey)

_pods: kopf.Index[PodKey, dict[str, Any]] | None = None
_claims: kopf.Index[ClaimKey, dict[str, Any]] | None = None
_warnings: kopf.Index[EventKey, dict[str, Any]] | None = None


def slim_pod(body: kopf.Body) -> dict[str, Any]:
    """What `worker_pods` and `queueing` read of a pod; the rest (its spec, managed fields)
    would be most of the operator's memory with thousands of experiments."""
    meta, status = body.meta, body.status
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "status": {
            key: status[key]
            for key in ("phase", "conditions", "containerStatuses", "initContainerStatuses")
            if key in status
        },
    }


def slim_claim(body: kopf.Body) -> dict[str, Any]:
    """What `claims` reads of a claim."""
    spec = body.spec
    return {
        "metadata": {
            "name": body.meta.get("name"),
            "creationTimestamp": body.meta.get("creationTimestamp"),
        },
        "spec": {key: spec[key] for key in ("storageClassName", "accessModes") if key in spec},
        "status": {"phase": body.status.get("phase")},
    }


def slim_event(body: kopf.Body) -> dict[str, Any]:
    """What `conditions.newest_event` and the verdicts read of an event."""
    return {key: body.get(key) for key in ("reason", "message", "lastTimestamp", "eventTime")}


def register(settings: kopf.OperatorSettings) -> None:
    """Only what the indexes keep comes down the watches: on a shared cluster the operator
    never sees other pods, nor Normal events."""
    settings.watching.label_selectors["", "v1", "pods"] = EXPERIMENT_LABEL
    settings.watching.field_selectors["", "v1", "events"] = "type=Warning"


@kopf.index("", "v1", "pods", id="worker_pods", labels={EXPERIMENT_LABEL: kopf.PRESENT})
def worker_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[PodKey, dict[str, Any]]:
    return {(str(namespace), str(labels[EXPERIMENT_LABEL])): slim_pod(body)}


@kopf.index("", "v1", "persistentvolumeclaims", id="experiment_claims")
def experiment_claims(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[ClaimKey, dict[str, Any]]:
    return {(str(namespace), name): slim_claim(body)}


def _about_a_warned_kind(body: kopf.Body, **_: Any) -> bool:
    return (
        body.get("type") == "Warning"
        and (body.get("involvedObject") or {}).get("kind") in WARNED_KINDS
    )


@kopf.index("", "v1", "events", id="warning_events", when=_about_a_warned_kind)
def warning_events(
    namespace: str | None, body: kopf.Body, **_: Any
) -> dict[EventKey, dict[str, Any]]:
    about = body.get("involvedObject") or {}
    return {(str(namespace), str(about.get("kind")), str(about.get("name"))): slim_event(body)}


@kopf.on.startup()
def keep(**kwargs: Any) -> None:
    """kopf hands its indexes to handlers only (keyword arguments named after them); the
    same objects, filled as the watches go, serve the functions below (startup handlers get
    them before they are populated)."""
    global _pods, _claims, _warnings
    _pods, _claims = kwargs["worker_pods"], kwargs["experiment_claims"]
    _warnings = kwargs["warning_events"]


def pods_of(namespace: str, experiment: str) -> list[dict[str, Any]]:
    """The experiment's worker pods, as last seen by the watch."""
    return _stored(_pods, (namespace, experiment), "worker pod")


def claim(namespace: str, name: str) -> dict[str, Any] | None:
    """The claim as last seen by the watch; None when there is none of that name."""
    return next(iter(_stored(_claims, (namespace, name), "claim")), None)


def warnings_about(namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    """The Warning events about one object (the kubelet's, the scheduler's, a provisioner's)
    that have not expired."""
    return _stored(_warnings, (namespace, kind, name), "Warning event")


def _stored(
    index: kopf.Index[Key, dict[str, Any]] | None, key: Key, what: str
) -> list[dict[str, Any]]:
    if index is None:
        raise RuntimeError(f"the {what} index is read before the operator started")
    return list(index.get(key, []))
