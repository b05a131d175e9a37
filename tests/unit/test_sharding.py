"""Replicas sharing the experiments: who owns what, who is live, what a handover writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tempotrain_operator.sharding import (
    HANDLED_BY,
    Membership,
    dead_finalizers,
    finalizer_for,
    handover_patch,
    is_operator_finalizer,
    owner_of,
    replica_finalizers,
)
from tempotrain_workers.api import FINALIZER

UIDS = [str(uuid.UUID(int=i * 7919 + 13)) for i in range(2000)]
WALL = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)


def lease(holder: str, renewed: datetime) -> dict[str, object]:
    return {"spec": {"holderIdentity": holder, "renewTime": renewed.isoformat()}}


def test_each_object_has_one_owner_and_a_burst_is_spread() -> None:
    members = ["replica-a", "replica-b"]
    owners = [owner_of(uid, members) for uid in UIDS]
    share = owners.count("replica-a") / len(UIDS)
    assert 0.45 < share < 0.55
    assert owners == [owner_of(uid, reversed(members)) for uid in UIDS]  # order is not a vote
    assert owner_of(UIDS[0], []) is None


def test_only_the_objects_of_a_replica_that_leaves_move() -> None:
    three = ["replica-a", "replica-b", "replica-c"]
    two = ["replica-a", "replica-b"]
    for uid in UIDS:
        before = owner_of(uid, three)
        if before != "replica-c":
            assert owner_of(uid, two) == before
    moved = sum(owner_of(uid, three) == "replica-c" for uid in UIDS)
    assert 0.25 < moved / len(UIDS) < 0.42


def test_a_replica_without_a_fresh_lease_of_its_own_owns_nothing() -> None:
    membership = Membership("replica-a", lease_seconds=15)
    assert membership.members(100.0) == frozenset()
    membership.renewed(100.0)
    assert membership.members(110.0) == {"replica-a"}
    assert membership.members(115.0) == frozenset()


def test_a_peer_is_live_while_its_lease_changes_by_this_clock() -> None:
    membership = Membership("replica-a", lease_seconds=15)
    membership.renewed(100.0)
    # Seen for the first time: a recent renewal counts, an old one (a crashed peer) does not.
    membership.observe(
        [
            lease("replica-b", WALL - timedelta(seconds=3)),
            lease("replica-c", WALL - timedelta(hours=1)),
        ],
        at=100.0,
        wall=WALL,
    )
    assert membership.members(101.0) == {"replica-a", "replica-b"}
    # b keeps renewing; c comes back; then b stops renewing (its renewTime stays).
    membership.renewed(110.0)
    membership.observe(
        [
            lease("replica-b", WALL + timedelta(seconds=9)),
            lease("replica-c", WALL + timedelta(seconds=9)),
        ],
        at=110.0,
        wall=WALL,
    )
    assert membership.members(111.0) == {"replica-a", "replica-b", "replica-c"}
    membership.renewed(120.0)
    membership.observe(
        [
            lease("replica-b", WALL + timedelta(seconds=9)),
            lease("replica-c", WALL + timedelta(seconds=19)),
        ],
        at=120.0,
        wall=WALL,
    )
    assert membership.members(124.0) == {"replica-a", "replica-b", "replica-c"}
    assert membership.members(125.0) == {"replica-a", "replica-c"}  # 15 s without a change
    # c stops gracefully: its lease is deleted, it is gone at once.
    membership.observe([lease("replica-b", WALL + timedelta(seconds=9))], at=126.0, wall=WALL)
    assert membership.members(126.0) == {"replica-a"}


def test_replica_finalizers_are_valid_names_and_ours() -> None:
    long = "tempotrain-operator-5f7c9d8b6d-x2k4p-with-a-very-long-release-name"
    for identity in ("replica-a", long):
        finalizer = finalizer_for(identity)
        assert is_operator_finalizer(finalizer)
        assert len(finalizer.split("/", 1)[1]) <= 63
    assert finalizer_for(long) != finalizer_for(long + "x")
    assert is_operator_finalizer(FINALIZER)
    assert not is_operator_finalizer("kubernetes.io/pvc-protection")


def _experiment(finalizers: list[str], deleting: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"resourceVersion": "42", "finalizers": finalizers}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T20:00:00Z"
    return {"metadata": meta}


def test_a_handover_takes_off_dead_replicas_finalizers_and_puts_the_owners_on() -> None:
    live = replica_finalizers({"replica-b"})
    own = finalizer_for("replica-b")
    dead, other = finalizer_for("replica-a"), "example.com/keep-me"
    obj = _experiment([dead, FINALIZER, other])
    assert dead_finalizers(obj, live)
    meta = handover_patch(obj, "replica-b", own, live, WALL)["metadata"]
    assert meta["finalizers"] == [other, own]
    assert meta["resourceVersion"] == "42"
    assert meta["annotations"][HANDLED_BY] == "replica-b"
    # A live replica's finalizer stays (it takes it off itself); nothing to change: no list.
    alive = _experiment([own])
    assert not dead_finalizers(alive, live)
    assert "finalizers" not in handover_patch(alive, "replica-b", own, live, WALL)["metadata"]
    # Being deleted: a finalizer can no longer be added, only taken off.
    deleting = handover_patch(_experiment([dead], deleting=True), "replica-b", own, live, WALL)
    assert deleting["metadata"]["finalizers"] == []


def test_the_single_operator_replaces_replicas_finalizers_with_its_own() -> None:
    live = frozenset({FINALIZER})
    obj = _experiment([finalizer_for("replica-a"), finalizer_for("replica-b")])
    assert dead_finalizers(obj, live)
    meta = handover_patch(obj, None, FINALIZER, live, WALL)["metadata"]
    assert meta["finalizers"] == [FINALIZER]
    assert "annotations" not in meta
    assert not dead_finalizers(_experiment([FINALIZER]), live)


def test_each_handover_writes_a_new_annotation() -> None:
    live = replica_finalizers({"replica-b"})
    own = finalizer_for("replica-b")
    first = handover_patch(_experiment([]), "replica-b", own, live, WALL)
    later = handover_patch(
        _experiment([]), "replica-b", own, live, WALL + timedelta(microseconds=1)
    )
    assert first["metadata"]["annotations"] != later["metadata"]["annotations"]
