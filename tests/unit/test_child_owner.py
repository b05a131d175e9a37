"""A child that exists already is reused only when it is this experiment's."""

from __future__ import annotations

from tempotrain_operator.kube import OWNER_KIND, foreign_owner


def _child(references: list[dict[str, str]] | None = None, kind: str | None = None) -> dict:
    meta: dict = {"name": "x-runs"}
    if references is not None:
        meta["ownerReferences"] = references
    if kind is not None:
        meta["annotations"] = {OWNER_KIND: kind}
    return {"metadata": meta}


def test_owned_by_this_object_is_ours_and_by_another_is_not() -> None:
    ours = {"kind": "BertExperiment", "name": "x", "uid": "u1"}
    assert foreign_owner(_child([ours]), "BertExperiment", "u1") is None
    other = foreign_owner(_child([ours]), "Cifar10Scaling", "u2")
    assert other == "BertExperiment x (uid u1)"


def test_a_kept_claim_is_picked_up_by_the_same_kind_only() -> None:
    kept = _child(kind="BertExperiment")  # Retain: no owner, only the kind that made it
    assert foreign_owner(kept, "BertExperiment", "u-new") is None
    assert foreign_owner(kept, "Cifar10Scaling", "u2") == "a BertExperiment of the same name"
    assert foreign_owner(_child(), "Cifar10Scaling", "u2") is None  # made before the mark
