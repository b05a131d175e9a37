"""metav1.Condition bookkeeping: `type` is the list-map key; a transition time changes only
when the status does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tempotrain_workers.api import RetryState


@dataclass(frozen=True)
class Verdict:
    """What a condition will say: True/False, a CamelCase reason, a message for people."""

    ready: bool
    reason: str
    message: str


def find(status: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition of this type in a `.status` (of any kind: a pod, a Workload, an
    experiment); {} when it has none."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def is_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    return find(status, type_).get("status") == "True"


def newest_event(events: list[dict[str, Any]], reasons: set[str]) -> dict[str, Any] | None:
    """The latest of the events with one of these reasons (a kubelet's or a controller's own
    words for a condition's message); None when there is none."""
    matching = [e for e in events if e.get("reason") in reasons]
    if not matching:
        return None
    return max(matching, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")))


def upsert(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    value = "True" if status else "False"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = []
    found = False
    for condition in conditions or []:
        if condition.get("type") == type_:
            found = True
            changed = condition.get("status") != value
            condition = {
                **condition,
                "status": value,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": now if changed else condition.get("lastTransitionTime", now),
            }
        result.append(condition)
    if not found:
        result.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": now,
            }
        )
    return result


DEGRADED = "Degraded"


def degraded(retry: RetryState) -> Verdict:
    """`Degraded` True while a run retries after failures that no checkpoint has followed yet;
    False again once it saves one (or finishes)."""
    failure = retry.last_failure
    if not retry.degraded or failure is None:
        return Verdict(False, "Progressing", f"attempt {retry.attempts} is making progress")
    if retry.failures_without_progress >= retry.max_failures_without_progress:
        return Verdict(
            True,
            "RetriesExhausted",
            f"{retry.failures_without_progress} attempts in a row failed without a new "
            f"checkpoint, the last with {failure.reason}: {failure.message[:300]}",
        )
    return Verdict(
        True,
        "Retrying",
        f"the last attempt failed ({failure.reason}: {failure.message[:300]}); "
        f"{retry.failures_without_progress} of {retry.max_failures_without_progress} failures "
        "in a row without a new checkpoint; retrying from the last checkpoint",
    )
