"""Why an experiment's claims are not bound, read from them and their events: a storage class
that does not exist or cannot give the access mode asked for (most default classes cannot
give ReadWriteMany), or an existing claim that is not there. It becomes the condition
`StorageReady` on the experiment, never a silent Pending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tempotrain_operator.conditions import Verdict, newest_event

CONDITION = "StorageReady"
# A provisioner that says nothing for this long is not coming (or waits for a pod to be
# scheduled: a class that binds on first consumer; WorkersReady then says why it is not).
QUIET_LIMIT = timedelta(minutes=5)


@dataclass(frozen=True)
class ClaimState:
    volume: str  # snapshots | runs
    name: str
    claim: dict[str, Any] | None  # None: not found
    warnings: list[dict[str, Any]]  # its Warning events
    existing: bool  # the user's existingClaim, not one the operator made


def storage_health(states: list[ClaimState], now: datetime) -> Verdict | None:
    """The first claim's problem, or ready once every claim is bound; None while they are
    still being provisioned and nobody has complained yet."""
    for state in states:
        problem = _problem(state, now)
        if problem is not None:
            return problem
    if all(_phase(s) == "Bound" for s in states):
        names = ", ".join(s.name for s in states)
        return Verdict(True, "ClaimsBound", f"claims bound: {names}")
    return None


def _problem(state: ClaimState, now: datetime) -> Verdict | None:
    field = f"spec.storage.{state.volume}"
    if state.claim is None:
        if not state.existing:
            return None  # about to be created
        return Verdict(
            False,
            "ClaimMissing",
            f"{field}.existingClaim {state.name!r} does not exist in this namespace: create "
            "it, or clear existingClaim so that the operator makes one",
        )
    if _phase(state) != "Pending":
        return None
    spec = state.claim.get("spec") or {}
    storage_class = spec.get("storageClassName") or "(the default class)"
    modes = ",".join(spec.get("accessModes") or [])
    what = f"claim {state.name} (class {storage_class}, {modes})"
    advice = (
        f"set {field}.storageClassName to a class that provides {modes}"
        + (f", or {field}.accessMode" if "ReadWriteMany" in modes else "")
        + f", or {field}.existingClaim to a claim you made"
    )
    newest = newest_event(state.warnings, {"ProvisioningFailed"})
    if newest is not None:
        return Verdict(
            False, "ClaimPending", f"{what} cannot be provisioned: {newest['message']}; {advice}"
        )
    created = datetime.fromisoformat(str(state.claim["metadata"]["creationTimestamp"]))
    if now - created > QUIET_LIMIT:
        minutes = int(QUIET_LIMIT.total_seconds() // 60)
        return Verdict(
            False,
            "ClaimPending",
            f"{what} is still Pending after {minutes} min and no provisioner said why (is "
            f"there a default StorageClass? `kubectl get storageclass`); {advice}",
        )
    return None


def _phase(state: ClaimState) -> str | None:
    return ((state.claim or {}).get("status") or {}).get("phase")
