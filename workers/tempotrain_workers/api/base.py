"""What every part of the contract builds on: the strict payload base, run ids, and the
status target (so the per-kind modules need not import each other)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

# A DNS-1123 label: usable as a directory name, a label value and part of a workflow id,
# and never a path (no "/", no "..").
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RunId = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]


CEL = "x-kubernetes-validations"


def cel(rule: str, message: str) -> dict[str, Any]:
    return {"rule": rule, "message": message}


class WireModel(BaseModel):
    """A custom resource's part: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OPERATOR_QUEUE = "tempotrain-operator"  # status sink hosted by the operator
# A worker silent this long is taken for lost and its work goes elsewhere; a crash costs this
# plus the work's restart. 15 s leaves 10 s over the workers' 5 s heartbeat cadence
# (max_heartbeat_throttle_interval) for a loaded machine.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 15
# Training attempts in a row that may fail without saving a new checkpoint before a run fails.
DEFAULT_MAX_FAILURES_WITHOUT_PROGRESS = 5


class StatusTarget(Contract):
    """The custom resource whose `.status` a workflow reports to (via the operator)."""

    api_version: str = "tempotrain.dev/v1alpha1"
    kind: str
    namespace: str
    name: str
    uid: str | None = None
    queue: str = OPERATOR_QUEUE  # where the operator hosts publish_status
