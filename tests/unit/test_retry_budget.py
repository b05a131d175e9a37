"""The pure parts of crash budgeting: backoff, the Degraded condition, the status fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tempotrain_operator.conditions import degraded
from tempotrain_operator.mapping import progress_patch, status_patch
from tempotrain_workers.api import (
    AttemptFailure,
    Progress,
    RetryState,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.workflows.training import backoff

AT = datetime(2026, 1, 1, tzinfo=UTC)
FAILURE = AttemptFailure(reason="HeartbeatTimeout", message="activity Heartbeat timeout", at=AT)


def _retry(attempts: int, in_a_row: int, failure: AttemptFailure | None = FAILURE) -> RetryState:
    return RetryState(
        attempts=attempts,
        failures_without_progress=in_a_row,
        max_failures_without_progress=5,
        last_failure=failure,
    )


def test_no_backoff_after_progress_and_doubling_up_to_two_minutes_without() -> None:
    assert backoff(0) == timedelta(0)
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(20) == timedelta(minutes=2)


def test_degraded_while_retrying_without_progress_and_clear_once_progressing() -> None:
    retrying = degraded(_retry(attempts=3, in_a_row=2))
    assert retrying.ready and retrying.reason == "Retrying"
    assert "2 of 5" in retrying.message and "HeartbeatTimeout" in retrying.message

    healthy = degraded(_retry(attempts=3, in_a_row=0))
    assert not healthy.ready and healthy.reason == "Progressing"
    assert not degraded(_retry(attempts=1, in_a_row=0, failure=None)).ready

    exhausted = degraded(_retry(attempts=6, in_a_row=5))
    assert exhausted.ready and exhausted.reason == "RetriesExhausted"


def test_attempts_and_the_last_failure_reach_the_status() -> None:
    target = StatusTarget(kind="BertExperiment", namespace="ns", name="exp", uid="u")
    update = StatusUpdate(target=target, at=AT, retry=_retry(attempts=4, in_a_row=1))
    patch = status_patch(update, {"phase": "Training"})
    assert patch["attempts"] == 4
    assert patch["lastFailure"] == {
        "reason": "HeartbeatTimeout",
        "message": "activity Heartbeat timeout",
        "time": "2026-01-01T00:00:00Z",
    }


def test_live_progress_moves_forward_only_and_an_unchanged_step_patches_nothing() -> None:
    current = {"progress": {"step": 40, "totalSteps": 100, "percent": 40}}
    assert progress_patch(Progress(step=30, total_steps=100), current, AT) == {}
    assert progress_patch(Progress(step=40, total_steps=100), current, AT) == {}
    assert progress_patch(Progress(step=55, total_steps=100), current, AT) == {
        "progress": {"step": 55, "totalSteps": 100, "percent": 55}
    }
