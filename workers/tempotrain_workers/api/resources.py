"""Custom resources as pydantic models: the CRD schemas are generated from these (crdgen.py).

Field names are snake_case in Python and camelCase on the wire (Kubernetes convention).
Constraints here become OpenAPI constraints in the CRD, so `kubectl apply` rejects what the
operator would reject; rules across fields become CEL `x-kubernetes-validations`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints
from pydantic.config import JsonDict

from tempotrain_workers.api.base import (
    CEL,
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    DEFAULT_MAX_FAILURES_WITHOUT_PROGRESS,
    DNS_LABEL_PATTERN,
    RELATIVE_PATH_PATTERN,
    WireModel,
    cel,
    model_name_field,
)
from tempotrain_workers.api.contract import DEFAULT_DATASET, DEFAULT_DATASET_CONFIG, Phase
from tempotrain_workers.api.pod_settings import PodSettings
from tempotrain_workers.api.sweep import Objective, SweepSpec, TrialParameters

GROUP = "tempotrain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tempotrain"
FINALIZER = f"{GROUP}/workflow-cleanup"
LABEL_PREFIX = f"{GROUP}/"

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
# A Hub repository id: a name, or an owner and a name (never a path of the worker's disk).
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$"
# Hub ids are at most 96 characters per part.
HUB_ID_MAX = 193
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)]


# -- BertExperiment spec ------------------------------------------------------------------------
def hub_dataset_field() -> Any:
    return Field(
        default=None,
        min_length=1,
        max_length=HUB_ID_MAX,
        pattern=HUB_ID_PATTERN,
        description=f"a Hub dataset id, e.g. {DEFAULT_DATASET} or owner/name (a file on the "
        "snapshots volume is dataset.file)",
    )


class ModelSpec(WireModel):
    name: str = model_name_field()


class DatasetSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "has(self.name) != has(self.file)",
                    "set exactly one of dataset.name and dataset.file",
                ),
            ]
        }
    )
    name: str | None = hub_dataset_field()
    config: str | None = Field(
        default=None,
        max_length=128,
        description=f"Hub dataset config, e.g. {DEFAULT_DATASET_CONFIG}",
    )
    file: str | None = Field(
        default=None,
        max_length=512,
        pattern=RELATIVE_PATH_PATTERN,
        description="A .jsonl/.json/.csv/.parquet file, relative to the snapshots volume",
    )
    train_split: str = Field(default="train", min_length=1, max_length=64)
    eval_split: str = Field(default="validation", min_length=1, max_length=64)
    text_field: str | None = Field(default=None, max_length=128, description="inferred if unset")
    label_field: str | None = Field(default=None, max_length=128, description="inferred if unset")
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)


class TrainingSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "has(self.saveSteps) || has(self.saveIntervalMinutes)",
                    "set training.saveSteps and/or training.saveIntervalMinutes",
                ),
            ]
        }
    )
    epochs: float = Field(default=3.0, gt=0, le=100)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=2e-5, gt=0, lt=1)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    seed: int = Field(default=42, ge=0)
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="share of the steps the learning rate warms up"
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    save_steps: int | None = Field(default=500, ge=1)
    save_interval_minutes: float | None = Field(default=None, gt=0, le=1440)
    save_total_limit: int | None = Field(default=3, ge=1, le=100)
    heartbeat_timeout_seconds: int = Field(
        default=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
        ge=5,
        le=3600,
        description="a training worker silent this long is taken for lost and the run "
        "resumes elsewhere from its last checkpoint; a crash costs about this plus the "
        "trainer's start",
    )
    max_failures_without_progress: int = Field(
        default=DEFAULT_MAX_FAILURES_WITHOUT_PROGRESS,
        ge=1,
        le=1000,
        description="the run fails after this many training attempts in a row fail without "
        "saving a new checkpoint; an attempt that saved one resets the count, and its retry "
        "starts at once",
    )


class EvaluationSpec(WireModel):
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_eval_samples: int | None = Field(default=None, ge=1)


class Toleration(WireModel):
    key: str | None = Field(default=None, max_length=253)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(WireModel):
    gpus: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu per training pod")
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


class ReclaimPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class VolumeSpec(WireModel):
    size: Quantity = "20Gi"
    storage_class_name: str | None = Field(default=None, max_length=253)
    existing_claim: str | None = Field(default=None, pattern=DNS_LABEL_PATTERN, max_length=63)
    reclaim_policy: ReclaimPolicy = ReclaimPolicy.RETAIN
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] | None = Field(
        default=None,
        description="default: ReadWriteOnce where pods on one node mount it (a BertExperiment's "
        "eval pod runs beside its trainer), ReadWriteMany where pods on several nodes share it "
        "(Ray pods, several inference pods); an existingClaim is taken as it is",
    )


class StorageSpec(WireModel):
    snapshots: VolumeSpec = Field(default_factory=VolumeSpec)
    runs: VolumeSpec = Field(default_factory=VolumeSpec)


class WorkersSpec(PodSettings):
    """The worker pods' image, and what else their pods get on top of the operator's
    defaults (pull secrets, environment)."""

    image: str | None = Field(default=None, max_length=512, description="default: operator's")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


def immutable(field: str) -> JsonDict:
    """A transition rule: what defines a run cannot change under it (its workflow has its
    input already); the apiserver refuses the edit with this message. What is not marked
    (resources, images, worker counts) may change and is rolled out to the pods."""
    return {
        CEL: [
            cel(
                "self == oldSelf",
                f"spec.{field} cannot change once the experiment exists: delete it and apply "
                "the new spec (Retain claims keep the data)",
            )
        ]
    }


SUSPEND_DESCRIPTION = (
    "true: the run saves a verified checkpoint, its workers scale to 0 (a RayCluster is "
    "deleted) and its workflow waits; false again: it resumes from that checkpoint. Set "
    "before the run starts, nothing is created until it is false"
)


class BertExperimentSpec(WireModel):
    model: ModelSpec = Field(json_schema_extra=immutable("model"))
    dataset: DatasetSpec = Field(
        default_factory=lambda: DatasetSpec(name=DEFAULT_DATASET, config=DEFAULT_DATASET_CONFIG),
        json_schema_extra=immutable("dataset"),
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, json_schema_extra=immutable("training")
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, json_schema_extra=immutable("evaluation")
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(
        default_factory=StorageSpec, json_schema_extra=immutable("storage")
    )
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    run_id: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="default: the experiment's name",
        json_schema_extra=immutable("runId"),
    )
    retry_generation: int = Field(
        default=0,
        ge=0,
        description="raise it to run a Failed experiment again, from its last verified "
        "checkpoint, without delete and re-apply",
    )
    suspend: bool = Field(default=False, description=SUSPEND_DESCRIPTION)
    sweep: SweepSpec | None = Field(
        default=None,
        description="train several configurations, each a trial with its own run "
        "(<runId>-t00, ...), checkpoints and evaluation, and pick the best",
        json_schema_extra=immutable("sweep"),
    )


# -- status -------------------------------------------------------------------------------------
class Condition(WireModel):
    """metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = None


class SnapshotStatus(WireModel):
    id: str
    hash: str
    num_examples: int


class CheckpointStatus(WireModel):
    step: int
    epoch: float | None = None
    loss: float | None = None
    path: str
    saved_at: datetime | None = None


class ProgressStatus(WireModel):
    step: int
    total_steps: int | None = None
    percent: int | None = Field(default=None, ge=0, le=100)
    steps_per_second: float | None = Field(
        default=None, description="the trainer's rate over its last minute"
    )


class FailureStatus(WireModel):
    reason: str
    message: str = ""
    time: datetime | None = None


class MetricsStatus(WireModel):
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    num_eval_examples: int | None = None


class TrialCounts(WireModel):
    total: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = Field(default=0, description="cancelled before they finished")


class TrialRun(WireModel):
    """One trial of a sweep: what it changes, where it is, what it scored."""

    index: int
    run_id: str
    parameters: TrialParameters
    phase: Phase | None = None
    progress: ProgressStatus | None = None
    latest_checkpoint: CheckpointStatus | None = None
    metrics: MetricsStatus | None = None
    attempts: int | None = None
    last_failure: FailureStatus | None = None
    message: str | None = None
    eta: str | None = None
    history_file: str | None = Field(
        default=None, description="its training history (JSONL), relative to the runs volume"
    )


class BestTrial(WireModel):
    name: str
    run_id: str
    objective: Objective
    value: float
    parameters: TrialParameters


class ExperimentStatus(WireModel):
    """What every experiment kind's `.status` has: its phase, run and workflow, conditions."""

    phase: Phase | None = None
    run_id: str | None = None
    workflow_id: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    suspend_requested_at: datetime | None = Field(
        default=None,
        description="when its workflow was asked to save and stop (spec.suspend, or Kueue)",
    )


class BertExperimentStatus(ExperimentStatus):
    snapshot: SnapshotStatus | None = None
    latest_checkpoint: CheckpointStatus | None = None
    checkpoints_saved: int | None = None
    progress: ProgressStatus | None = None
    metrics: MetricsStatus | None = None
    attempts: int | None = Field(default=None, description="training attempts started")
    display_loss: str | None = Field(
        default=None, description="latestCheckpoint.loss to 4 significant digits (kubectl get)"
    )
    display_accuracy: str | None = Field(
        default=None, description="metrics.evalAccuracy to 4 significant digits (kubectl get)"
    )
    last_failure: FailureStatus | None = None
    estimated_completion_time: datetime | None = Field(
        default=None, description="when training should end at its recent rate"
    )
    eta: str | None = Field(
        default=None, description="training time left at its recent rate (kubectl get)"
    )
    runs_claim: str | None = Field(
        default=None, description="the PersistentVolumeClaim that holds runs and histories"
    )
    history_file: str | None = Field(
        default=None,
        description="the training history (loss, learning rate, eval metrics per step; "
        "JSONL, TensorBoard events beside it), relative to the runs volume",
    )
    trials: TrialCounts | None = None
    trial_runs: dict[str, TrialRun] | None = Field(
        default=None, description="a sweep's trials by name (t00, t01, ...)"
    )
    best_trial: BestTrial | None = None
    display_trials: str | None = Field(default=None, description="finished/total (kubectl get)")
    display_best: str | None = Field(
        default=None, description="the best trial and its objective (kubectl get)"
    )


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
