"""The experiments' worker pods as the operator's own watch has them (a kopf index), so that
the health checks of the resync timers, the delete handler and the queue read memory instead
of LISTing pods: a LIST by label per experiment per minute made the apiserver filter every
pod of the namespace each time, which grows with the square of the experiments.

The watch is filtered by the server (the experiment label), and kopf runs no experiment
handler before the index holds what the first listing gave: an empty answer means there are
no pods, never that they have not been seen yet."""

from __future__ import annotations

from typing import Any

import kopf
from tempotrain_workers.api import LABEL_PREFIX

EXPERIMENT_LABEL = f"{LABEL_PREFIX}experiment"
Key = tuple[str, str]  # (namespace, experiment name)

_pods: kopf.Index[Key, dict[str, Any]] | None = None


def slim(body: kopf.Body) -> dict[str, Any]:
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


def register(settings: kopf.OperatorSettings) -> None:
    """Only pods with the experiment label come down the watch: on a shared cluster the
    operator never sees the rest."""
    settings.watching.label_selectors["", "v1", "pods"] = EXPERIMENT_LABEL


@kopf.index("", "v1", "pods", id="worker_pods", labels={EXPERIMENT_LABEL: kopf.PRESENT})
def worker_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), str(labels[EXPERIMENT_LABEL])): slim(body)}


@kopf.on.startup()
def keep(**kwargs: Any) -> None:
    """kopf hands its indexes to handlers only (a keyword argument named after the index);
    the same object, filled as the watch goes, serves the functions below (startup handlers
    get it before it is populated)."""
    global _pods
    _pods = kwargs["worker_pods"]


def pods_of(namespace: str, experiment: str) -> list[dict[str, Any]]:
    """The experiment's worker pods, as last seen by the watch."""
    if _pods is None:
        raise RuntimeError("the worker pod index is read before the operator started")
    return list(_pods.get((namespace, experiment), []))
