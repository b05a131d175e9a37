"""Which status updates may touch a CR: only those carrying its uid."""

from __future__ import annotations

from tempotrain_operator.status_sink import refusal
from tempotrain_workers.api import StatusTarget

EXPERIMENT = {"metadata": {"name": "exp", "namespace": "ns", "uid": "uid-1"}}


def _target(uid: str | None) -> StatusTarget:
    return StatusTarget(kind="BertExperiment", namespace="ns", name="exp", uid=uid)


def test_an_update_with_the_crs_uid_is_applied() -> None:
    assert refusal(_target("uid-1"), EXPERIMENT) is None


def test_an_update_without_a_uid_is_refused() -> None:
    """Anyone who can reach Temporal could otherwise fail another namespace's experiment."""
    assert refusal(_target(None), EXPERIMENT) == "it names no uid"


def test_an_update_for_an_earlier_object_of_that_name_is_refused() -> None:
    reason = refusal(_target("uid-0"), EXPERIMENT)
    assert reason is not None and "uid-0" in reason and "uid-1" in reason
