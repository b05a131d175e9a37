"""What every part of the contract builds on: the strict payload base, run ids, and the
status target (so the per-kind modules need not import each other)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# A DNS-1123 label: usable as a directory name, a label value and part of a workflow id,
# and never a path (no "/", no "..").
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RunId = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OPERATOR_QUEUE = "tempotrain-operator"  # status sink hosted by the operator


class StatusTarget(Contract):
    """The custom resource whose `.status` a workflow reports to (via the operator)."""

    api_version: str = "tempotrain.dev/v1alpha1"
    kind: str
    namespace: str
    name: str
    uid: str | None = None
    queue: str = OPERATOR_QUEUE  # where the operator hosts publish_status
