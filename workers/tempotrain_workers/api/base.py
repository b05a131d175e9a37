"""What every part of the contract builds on: the strict payload base, run ids, and the
status target (so the per-kind modules need not import each other)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# A DNS-1123 label: usable as a directory name, a label value and part of a workflow id,
# and never a path (no "/", no "..").
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A path inside the snapshots volume: relative, no "..", no leading "/".
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$"
# Hub ids are at most 96 characters per part; a folder on the volume gets some room more.
MODEL_NAME_MAX = 256
RunId = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]


CEL = "x-kubernetes-validations"


def cel(rule: str, message: str) -> dict[str, Any]:
    return {"rule": rule, "message": message}


def model_name_field(**kwargs: Any) -> Any:
    """A model: a Hub id, or a folder relative to the snapshots volume. Confined to that
    volume: no absolute path, no `..`, so a spec cannot read the worker's own files."""
    return Field(
        min_length=1,
        max_length=MODEL_NAME_MAX,
        pattern=RELATIVE_PATH_PATTERN,
        description="a Hub id (bert-base-uncased, org/name) or a model folder relative to "
        "the snapshots volume (models/minilm); no absolute paths or '..'",
        **kwargs,
    )


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
    trial: str | None = None  # a sweep's trial: its updates go to `.status.trialRuns[trial]`
