"""The contract shared by workflows, activities, the operator and the tests.

Pydantic v2 models only: no ML imports, no I/O. Field constraints carry the validation, so a
bad request fails when it is built (or when the workflow rejects it), never deep in a GPU job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from tempotrain_workers.api.base import (
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    DEFAULT_MAX_FAILURES_WITHOUT_PROGRESS,
    Contract,
    RunId,
    StatusTarget,
)
from tempotrain_workers.api.inference import InferenceProgress
from tempotrain_workers.api.scaling import ScaleOutcome
from tempotrain_workers.api.sweep import Objective

# -- task queues (DESIGN.md §1) ---------------------------------------------------------------
TRAINING_QUEUE = "tempotrain-training"  # GPU: fine-tuning
EVAL_QUEUE = "tempotrain-eval"  # CPU: coordinator, evaluation, snapshots, inference
RAY_QUEUE = "tempotrain-ray"

PUBLISH_STATUS_ACTIVITY = "publish_status"
# The signal (a bool) that suspends (true) or resumes (false) every experiment's workflow.
SUSPEND_SIGNAL = "set_suspended"


DEFAULT_MODEL = "bert-base-uncased"
DEFAULT_DATASET = "glue"
DEFAULT_DATASET_CONFIG = "sst2"
# Snapshots and evaluation: a lost worker is noticed this fast, not after the activity's whole
# time limit (hours). Their heartbeats come every 2 s from the worker's event loop.
WORK_HEARTBEAT_TIMEOUT = timedelta(seconds=30)


# -- checkpoints ------------------------------------------------------------------------------
class CheckpointInfo(Contract):
    """A complete checkpoint: its marker was written last and verified."""

    step: int = Field(ge=0)
    epoch: float = Field(ge=0)
    loss: float | None = None
    path: str
    snapshot_hash: str
    saved_at: datetime


# -- dataset snapshots -----------------------------------------------------------------------
class DatasetSnapshotRequest(Contract):
    dataset_name: str = Field(
        min_length=1,
        description="A Hub dataset name, or a local .json/.jsonl/.csv/.parquet file or folder",
    )
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    # When the eval split does not exist (a single local file), hold out this share of train.
    eval_holdout_fraction: float = Field(default=0.1, gt=0, lt=1)
    text_field: str | None = None
    label_field: str | None = None
    max_train_samples: int | None = Field(default=None, gt=0)
    max_eval_samples: int | None = Field(default=None, gt=0)
    seed: int = 42
    snapshots_root: str | None = None  # default: the worker's --snapshots-root


class DatasetSchema(Contract):
    text_field: str
    label_field: str
    num_labels: int = Field(ge=2)
    label_names: list[str] | None = None


class DatasetSnapshotResult(Contract):
    snapshot_id: str
    snapshot_hash: str
    path: str
    schema_: DatasetSchema = Field(alias="schema")
    num_train_examples: int
    num_eval_examples: int
    reused: bool

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- fine-tuning ------------------------------------------------------------------------------
class BertFineTuneConfig(Contract):
    run_id: RunId | None = None
    model_name: str = Field(default=DEFAULT_MODEL, min_length=1)
    dataset_name: str = Field(default=DEFAULT_DATASET, min_length=1)
    dataset_config: str | None = DEFAULT_DATASET_CONFIG
    train_split: str = "train"
    eval_split: str = "validation"
    text_field: str | None = None
    label_field: str | None = None
    max_seq_length: int = Field(default=128, ge=8, le=512)
    num_epochs: float = Field(default=3.0, gt=0, le=100)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=2e-5, gt=0, lt=1)
    seed: int = 42
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_train_samples: int | None = Field(default=None, gt=0)
    max_eval_samples: int | None = Field(default=None, gt=0)
    save_steps: int | None = Field(default=500, gt=0)
    save_interval_minutes: float | None = Field(default=None, gt=0)
    save_total_limit: int | None = Field(default=3, gt=0)
    eval_steps: int | None = Field(default=None, gt=0)  # evaluate during training (sweeps)
    # A lost worker is noticed after this long without a heartbeat, then the work is retried.
    # Heartbeats come from the supervising activity's event loop every few seconds (not from
    # the busy trainer process), so a short timeout is safe and a crash costs seconds.
    heartbeat_timeout_seconds: int = Field(default=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS, ge=5, le=3600)
    # Crashes are budgeted per stretch without progress, not per lifetime: an attempt that
    # saved a new checkpoint resets the count, so preemptions over days never add up.
    max_failures_without_progress: int = Field(
        default=DEFAULT_MAX_FAILURES_WITHOUT_PROGRESS, ge=1, le=1000
    )

    @model_validator(mode="after")
    def _some_save_cadence(self) -> BertFineTuneConfig:
        if self.save_steps is None and self.save_interval_minutes is None:
            raise ValueError("set save_steps and/or save_interval_minutes: a run must checkpoint")
        return self

    def snapshot_request(self, snapshots_root: str | None = None) -> DatasetSnapshotRequest:
        return DatasetSnapshotRequest(
            dataset_name=self.dataset_name,
            dataset_config=self.dataset_config,
            train_split=self.train_split,
            eval_split=self.eval_split,
            text_field=self.text_field,
            label_field=self.label_field,
            max_train_samples=self.max_train_samples,
            max_eval_samples=self.max_eval_samples,
            seed=self.seed,
            snapshots_root=snapshots_root,
        )


class Phase(StrEnum):
    PENDING = "Pending"
    SNAPSHOTTING = "Snapshotting"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    RUNNING = "Running"  # BatchInference: chunks being processed
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"  # held by Kueue: not admitted yet, or evicted and waiting again
    TERMINATING = "Terminating"  # deleted: its workflow is being cancelled
    CANCELLED = "Cancelled"  # deleted, and its workflow has closed


class Progress(Contract):
    step: int = Field(ge=0)
    total_steps: int | None = Field(default=None, ge=0)
    epoch: float | None = None
    loss: float | None = None
    # Over the last minute of this attempt (saves included): what the ETA is computed from.
    steps_per_second: float | None = Field(default=None, gt=0)


class TrainingHeartbeat(Contract):
    """What the training activity heartbeats: live progress travels here, not as signals, so
    it costs no workflow history (the operator reads it with describe). Also the last word of
    an attempt that died: the workflow learns from it whether that attempt made progress."""

    progress: Progress | None = None
    checkpoint: CheckpointInfo | None = None  # the newest verified checkpoint of the run
    resumed_step: int | None = None  # where this attempt started from (None: from scratch)


class AttemptFailure(Contract):
    """Why the last training attempt ended, for `.status.lastFailure`."""

    reason: str = Field(max_length=128)  # an error type, e.g. a heartbeat timeout
    message: str = Field(max_length=4096)
    at: datetime


class RetryState(Contract):
    """Where a run stands with its failures: `.status.attempts`, `lastFailure`, `Degraded`."""

    attempts: int = Field(ge=1)  # training attempts started, over the whole run
    failures_without_progress: int = Field(ge=0)
    max_failures_without_progress: int = Field(ge=1)
    last_failure: AttemptFailure | None = None

    @property
    def degraded(self) -> bool:
        """Retrying after a failure that has not yet been followed by progress."""
        return self.failures_without_progress > 0


class TrialOutcome(Contract):
    """How one trial of a sweep ended (or stands)."""

    name: str
    run_id: str
    phase: Phase
    value: float | None = None  # its objective, once evaluated
    message: str | None = None


class SweepProgress(Contract):
    """A sweep's counts and best trial, as its coordinator knows them."""

    total: int = Field(ge=1)
    running: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    stopped: int = Field(default=0, ge=0)
    objective: Objective
    best: TrialOutcome | None = None


class StatusUpdate(Contract):
    """A partial status: fields left None are not changed by the operator."""

    target: StatusTarget
    phase: Phase | None = None
    run_id: str | None = None
    workflow_id: str | None = None
    snapshot: DatasetSnapshotResult | None = None
    latest_checkpoint: CheckpointInfo | None = None
    checkpoints_saved: int | None = None
    progress: Progress | None = None
    metrics: dict[str, float] | None = None
    # Cifar10Scaling: the scale running now (1-based) out of how many, and the finished ones.
    current_scale: int | None = Field(default=None, ge=1)
    total_scales: int | None = Field(default=None, ge=1)
    scale_results: list[ScaleOutcome] | None = None
    inference: InferenceProgress | None = None  # BatchInference: chunk counts, rate, output
    retry: RetryState | None = None  # BertExperiment training: attempts and failures
    sweep: SweepProgress | None = None  # a sweep's coordinator: counts, best, ended trials
    message: str | None = None
    at: datetime


class TrainingCarry(Contract):
    """What a training workflow hands to its next run when it continues as new."""

    snapshot: DatasetSnapshotResult
    latest: CheckpointInfo | None = None
    checkpoints_seen: int = 0
    retry: RetryState | None = None


class BertTrainingInput(Contract):
    config: BertFineTuneConfig
    status_target: StatusTarget | None = None
    snapshot_queue: str = EVAL_QUEUE  # snapshots are CPU work, next to evaluation
    # Continue as new past this many history events (or when the server suggests it), so a
    # run of any length stays far below Temporal's 10,240-event warning.
    history_limit: int = Field(default=4000, ge=200, le=10_000)
    carry: TrainingCarry | None = None  # set only by continue-as-new
    suspended: bool = False  # the coordinator's spec.suspend when it started this run


class BertFineTuneRequest(Contract):
    config: BertFineTuneConfig  # run_id is always set here
    snapshot: DatasetSnapshotResult
    resume_from: CheckpointInfo | None = None  # a hint: the run directory is the truth
    runs_root: str | None = None  # default: the worker's --runs-root
    # The workflow's count: each attempt is one activity execution (whose own count stays 1).
    # Names the attempt's job file and trainer log.
    attempt: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _run_id_is_set(self) -> BertFineTuneRequest:
        if self.config.run_id is None:
            raise ValueError("config.run_id must be set before fine-tuning")
        return self


class BertFineTuneResult(Contract):
    run_id: str
    model_path: str
    snapshot_id: str
    snapshot_hash: str
    schema_: DatasetSchema = Field(alias="schema")
    global_step: int
    total_steps: int
    train_loss: float | None
    losses: list[float]  # logged training losses, in order
    eval_loss: float | None
    eval_accuracy: float | None
    checkpoints_saved: int
    latest_checkpoint: CheckpointInfo | None
    resumed_from_step: int | None
    device: str
    train_seconds: float
    # The training loop held by saves: copies to host memory (and, with synchronous saves,
    # the writes and markers), and any wait for the save before to finish.
    checkpoint_seconds: float = 0.0
    # Writes, fsyncs and markers in the background, overlapped with training.
    checkpoint_write_seconds: float = 0.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- evaluation and inference ---------------------------------------------------------------
class BertEvalRequest(Contract):
    run_id: RunId | None = None  # None inside a coordinator: the training run's id
    dataset_name: str | None = None  # None: the eval split of the run's training snapshot
    dataset_config: str | None = None
    split: str = "validation"
    text_field: str | None = None
    label_field: str | None = None
    max_eval_samples: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    runs_root: str | None = None
    snapshots_root: str | None = None
    snapshot_id: str | None = None  # set by the coordinator


class BertEvalResult(Contract):
    run_id: str
    dataset: str
    split: str
    num_examples: int
    accuracy: float
    loss: float
    confusion: list[list[int]]


class BertInferenceRequest(Contract):
    run_id: RunId
    texts: list[str] = Field(min_length=1, max_length=10_000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    runs_root: str | None = None


class Prediction(Contract):
    text: str
    label: int
    label_name: str | None
    confidence: float


class BertInferenceResult(Contract):
    run_id: str
    predictions: list[Prediction]


# -- coordinator ------------------------------------------------------------------------------
class CoordinatorWorkflowConfig(Contract):
    fine_tune: BertFineTuneConfig
    evaluation: BertEvalRequest = BertEvalRequest()
    trial: str | None = None  # a sweep's trial name (t00, ...): its status goes to that row


class SweepPolicy(Contract):
    """How a coordinator runs its configs as a sweep's trials."""

    max_parallel: int = Field(default=1, ge=1)
    objective: Objective = Objective.EVAL_ACCURACY
    max_failed_trials: int | None = Field(default=None, ge=0)  # None: fail when all fail
    # The median stopping rule (None: off): judged from a trial's n-th evaluation, against
    # at least this many other trials.
    stop_after_evaluations: int | None = Field(default=None, ge=1)
    stop_min_trials: int = Field(default=2, ge=1)


class Evaluation(Contract):
    """An evaluation during training (`eval_steps`), as the trainer reports it."""

    step: int = Field(ge=0)
    eval_loss: float | None = None
    eval_accuracy: float | None = None

    def value(self, objective: Objective) -> float | None:
        return self.eval_accuracy if objective.maximize else self.eval_loss


class TrialEvaluation(Contract):
    """An evaluation of a sweep's trial, from its training workflow to the coordinator."""

    trial: str
    evaluation: Evaluation


EVALUATION_SIGNAL = "report_evaluation"  # trainer → its training workflow
TRIAL_EVALUATED_SIGNAL = "trial_evaluated"  # training workflow → its sweep's coordinator


class CoordinatorWorkflowInput(Contract):
    configs: list[CoordinatorWorkflowConfig] = Field(min_length=1, max_length=64)
    status_target: StatusTarget | None = None
    training_queue: str = TRAINING_QUEUE
    eval_queue: str = EVAL_QUEUE
    sweep: SweepPolicy | None = None  # None: every config at once, the first failure fails all


class CoordinatorRunResult(Contract):
    training: BertFineTuneResult
    evaluation: BertEvalResult
    trial: str | None = None


class CoordinatorWorkflowResult(Contract):
    runs: list[CoordinatorRunResult]  # a sweep: its succeeded trials
    trials: list[TrialOutcome] = Field(default_factory=list)  # a sweep: every trial
    best: TrialOutcome | None = None


# -- error types (ApplicationError.type): non-retryable -----------------------------------------
class ErrorType(StrEnum):
    INVALID_INPUT = "InvalidInput"
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_SCHEMA = "DatasetSchemaError"
    MODEL_NOT_FOUND = "ModelNotFound"
    RUN_NOT_FOUND = "RunNotFound"
    DEPENDENCY_MISSING = "DependencyMissing"
    RAY_UNAVAILABLE = "RayUnavailable"


NON_RETRYABLE_ERRORS = [str(e) for e in ErrorType]


def training_workflow_id(coordinator_id: str, index: int = 0) -> str:
    """The coordinator's training child for its config `index` (the operator reads its
    heartbeat for live progress)."""
    return f"{coordinator_id}-train-{index}"


def workflow_id_for(kind: str, namespace: str, name: str, uid: str) -> str:
    """`<kind-lowercase>-<namespace>-<name>-<uid[:8]>`: the same CR always maps to one id."""
    return f"{kind.lower()}-{namespace}-{name}-{uid[:8]}"
