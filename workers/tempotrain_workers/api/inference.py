"""Contract of chunked, resumable batch inference.

A job runs one model over rows [start, end) of a dataset split, in chunks. Each chunk's
output is a Parquet file plus a marker written last (rows, sha256, the job's fingerprint); a
chunk whose marker verifies is skipped on any re-run, so a crash costs at most the chunks in
flight. Paths are relative to the worker's volumes (model runs and outputs to the runs volume,
model folders and dataset files to the snapshots volume) unless absolute.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum

from pydantic import Field, model_validator

from tempotrain_workers.api.base import (
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    Contract,
    RunId,
    StatusTarget,
)

INFERENCE_QUEUE = "tempotrain-inference"
# An unset chunk size aims for this much compute per chunk: the fixed cost of a chunk (a
# workflow task, the activity's pickup, Parquet, sha256, marker: ~35 ms) stays ~2 % of it,
# while a crash still loses only seconds.
CHUNK_TARGET_SECONDS = 2.0
DEFAULT_CHUNK_SIZE = 50  # only where a worker older than measured chunk sizes planned the job
# Chunks a worker takes beyond its devices: one is prepared (rows read, tokenized) while the
# others are scored, and writes its output while the next one is scored.
PREFETCH_CHUNKS = 1


def worker_concurrency(devices: int) -> int:
    """Chunks one inference worker takes at once: one per device (the CPU is one) + prefetch."""
    return max(1, devices) + PREFETCH_CHUNKS


MERGED_NAME = "output"  # <output_dir>/output.parquet and its marker output.json


class Pooling(StrEnum):
    CLS = "cls"  # the first token's hidden state
    MEAN = "mean"  # the attention-masked mean over tokens


class ActivationsSpec(Contract):
    layer: int = Field(default=-1, ge=-64, le=64, description="hidden_states index; -1: last")
    pooling: Pooling = Pooling.CLS


class RowRange(Contract):
    """Rows [start, end) of the split."""

    start: int = Field(ge=0)
    end: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RowRange:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self

    @property
    def name(self) -> str:
        return f"chunk_{self.start:09d}-{self.end:09d}"


class RowSelection(Contract):
    """The rows a job asks for: [start, end); no end means up to the split's last row."""

    start: int = Field(default=0, ge=0)
    end: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RowSelection:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self


def chunk_ranges(whole: RowRange, chunk_size: int) -> list[RowRange]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    return [
        RowRange(start=start, end=min(start + chunk_size, whole.end))
        for start in range(whole.start, whole.end, chunk_size)
    ]


class InferenceJob(Contract):
    """What every chunk of one job shares."""

    job_id: str = Field(min_length=1, max_length=256)
    model_run: RunId | None = Field(
        default=None, description="a finished run on the runs volume: its trained model"
    )
    model_name: str | None = Field(
        default=None, min_length=1, description="a Hub id, or a model folder (snapshots volume)"
    )
    dataset_name: str = Field(min_length=1, description="Hub id or a file on the snapshots volume")
    dataset_config: str | None = None
    split: str = "train"
    text_field: str = Field(default="text", min_length=1)
    output_dir: str = Field(min_length=1, description="relative to the runs volume")
    activations: ActivationsSpec | None = None
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_seq_length: int = Field(default=128, ge=8, le=512)

    @model_validator(mode="after")
    def _one_model(self) -> InferenceJob:
        if (self.model_run is None) == (self.model_name is None):
            raise ValueError("set exactly one of model_run and model_name")
        return self

    def fingerprint(self) -> str:
        """What decides the output's content; markers carry it, so outputs of a different job
        (another model, dataset or pooling) in the same folder are never taken for ours.
        Batch size is left out: it changes padding, not results (beyond float noise)."""
        identity = self.model_dump(
            mode="json",
            include={
                "model_run",
                "model_name",
                "dataset_name",
                "dataset_config",
                "split",
                "text_field",
                "activations",
                "max_seq_length",
            },
        )
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class MergeResult(Contract):
    path: str
    rows: int
    sha256: str


class PlanRequest(Contract):
    job: InferenceJob
    range: RowSelection = RowSelection()
    chunk_size: int | None = Field(default=None, ge=1)  # None: measured (see ChunkSizing)
    in_flight: int = Field(default=1, ge=1)  # chunks at once: every one of them gets work


class ChunkSizing(Contract):
    """How the chunk size was chosen; `<output>/chunking.json` keeps it with the job's output,
    so a re-run of the job (a retry, a second BatchInference over the same path) cuts the
    same chunks and reuses every finished one, whatever a new probe would measure."""

    fingerprint: str
    range: RowRange
    chunk_size: int = Field(ge=1)
    measured: bool  # False: the spec gave it
    rows_per_second: float | None = None  # the probe's, on `device`
    device: str | None = None


class InferencePlan(Contract):
    range: RowRange  # the selection resolved against the split's length
    existing: MergeResult | None = None  # this job's merged output, already there and verified
    # None only from a worker older than the measured chunk size: the request's then.
    chunk_size: int | None = Field(default=None, ge=1)


class ChunkRequest(Contract):
    job: InferenceJob
    range: RowRange


class ChunkOutcome(Contract):
    range: RowRange
    rows: int
    sha256: str
    path: str
    skipped: bool  # its verified output was already there
    recomputed: bool = False  # an output was there but failed its checksum
    attempt: int = 1  # > 1 and not skipped: work an earlier attempt (a crash) lost
    seconds: float = 0.0


class MergeRequest(Contract):
    job: InferenceJob
    # The chunks are chunk_ranges(range, chunk_size): derived, so the request stays small
    # however many chunks a job has (Temporal caps a payload at 2 MB).
    range: RowRange
    chunk_size: int = Field(ge=1)
    retain_chunks: bool = False


class ChunkTally(Contract):
    """Counts carried across continue-as-new."""

    next_index: int = 0  # chunks before this one are done
    completed: int = 0  # computed in this job
    skipped: int = 0  # already done (verified) before this job got to them
    failed: int = 0
    recomputed: int = 0  # outputs that failed their checksum and were computed again
    retried: int = 0  # computed on a later attempt: the first one was lost (a worker crash)
    rows: int = 0  # rows of finished chunks, computed or skipped
    computed_rows: int = 0
    compute_seconds: float = 0.0
    started_at: datetime | None = None  # the first run's start, for rows per second


class BatchInferenceInput(Contract):
    job: InferenceJob
    range: RowSelection = RowSelection()
    # None: the plan measures it (and keeps it with the output); set after the first run.
    chunk_size: int | None = Field(default=None, ge=1, le=1_000_000)
    workers: int = Field(default=1, ge=1, le=1024, description="chunks in flight at once")
    retain_chunks: bool = False
    inference_queue: str = INFERENCE_QUEUE
    # Chunks per workflow run before continue-as-new keeps the history small.
    chunks_per_run: int = Field(default=200, ge=1, le=10_000)
    # A worker that dies mid-chunk is noticed after this long, and its chunk goes elsewhere.
    heartbeat_timeout_seconds: float = Field(
        default=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS, ge=1.0, le=3600.0
    )
    status_target: StatusTarget | None = None
    tally: ChunkTally = ChunkTally()
    suspended: bool = False  # carried over continue-as-new


class InferenceProgress(Contract):
    """What a BatchInference's `.status` shows; pushed through `publish_status`."""

    total: int = Field(ge=0)
    chunk_size: int | None = None
    completed: int = Field(default=0, ge=0)
    skipped: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    rows_per_second: float | None = None
    output: MergeResult | None = None


class BatchInferenceResult(Contract):
    output: MergeResult
    chunks_total: int
    chunk_size: int | None = None
    tally: ChunkTally
