"""StorageReady: what the experiment says about claims that stay Pending, from the claims
and their events as the PV controller writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tempotrain_operator.claims import ClaimState, storage_health

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _claim(phase: str, *, modes: list[str], storage_class: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": modes}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "metadata": {"creationTimestamp": "2026-12-01T11:59:00Z"},
        "spec": spec,
        "status": {"phase": phase},
    }


def _state(volume: str, claim: dict[str, Any] | None, **kw: Any) -> ClaimState:
    return ClaimState(
        volume, f"exp-{volume}", claim, kw.get("warnings", []), kw.get("existing", False)
    )


def test_bound_claims_are_ready() -> None:
    bound = _claim("Bound", modes=["ReadWriteOnce"])
    verdict = storage_health([_state("snapshots", bound), _state("runs", bound)], NOW)
    assert verdict is not None and verdict.ready and verdict.reason == "ClaimsBound"


def test_a_class_that_cannot_provision_says_why_and_what_to_set() -> None:
    failed = {
        "reason": "ProvisioningFailed",
        "message": "failed to provision volume: Only support ReadWriteOnce access mode",
        "lastTimestamp": "2026-12-01T11:59:30Z",
    }
    pending = _claim("Pending", modes=["ReadWriteMany"], storage_class="standard")
    verdict = storage_health(
        [_state("snapshots", _claim("Bound", modes=["ReadWriteOnce"])),
         _state("runs", pending, warnings=[failed])],
        NOW,
    )  # fmt: skip
    assert verdict is not None and not verdict.ready and verdict.reason == "ClaimPending"
    message = verdict.message
    assert "claim exp-runs (class standard, ReadWriteMany)" in message
    assert "Only support ReadWriteOnce access mode" in message
    assert "spec.storage.runs.storageClassName" in message
    assert "spec.storage.runs.accessMode" in message


def test_a_quiet_pending_claim_is_reported_only_after_a_while() -> None:
    pending = _claim("Pending", modes=["ReadWriteOnce"])
    assert storage_health([_state("runs", pending)], NOW) is None
    verdict = storage_health([_state("runs", pending)], NOW + timedelta(minutes=10))
    assert verdict is not None and verdict.reason == "ClaimPending"
    assert "(the default class" in verdict.message and "kubectl get storageclass" in verdict.message


def test_a_missing_existing_claim_is_named() -> None:
    verdict = storage_health([_state("snapshots", None, existing=True)], NOW)
    assert verdict is not None and verdict.reason == "ClaimMissing"
    assert "spec.storage.snapshots.existingClaim 'exp-snapshots'" in verdict.message
    # One the operator is about to make is no problem yet.
    assert storage_health([_state("runs", None)], NOW) is None
