"""The activities a TempoTrain worker hosts; roots for snapshots and runs come from the worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio import activity

from tempotrain_workers import metrics
from tempotrain_workers.api import (
    BertEvalRequest,
    BertEvalResult,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    ChunkOutcome,
    ChunkRequest,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    InferencePlan,
    MergeRequest,
    MergeResult,
    PlanRequest,
    ScaleTrainRequest,
    ScaleTrainResult,
)
from tempotrain_workers.heartbeats import heartbeating
from tempotrain_workers.ml_imports import ml_stack_ready


@dataclass(frozen=True)
class StorageRoots:
    snapshots: Path
    runs: Path


class BertActivities:
    def __init__(
        self, roots: StorageRoots, trainer_command: Callable[[Path], list[str]] | None = None
    ) -> None:
        """`trainer_command`: what fine-tuning runs as its process (default: the HF trainer,
        `fine_tune.trainer_command`); a simulator for long-run checks."""
        self.roots = roots
        self.trainer_command = trainer_command

    def _snapshots_root(self, override: str | None) -> Path:
        return Path(override) if override else self.roots.snapshots

    def _runs_root(self, override: str | None) -> Path:
        return Path(override) if override else self.roots.runs

    @activity.defn(name="create_dataset_snapshot")
    async def create_dataset_snapshot(
        self, request: DatasetSnapshotRequest
    ) -> DatasetSnapshotResult:
        await ml_stack_ready()
        from tempotrain_workers.snapshots import create_snapshot

        root = self._snapshots_root(request.snapshots_root)
        result = await heartbeating(create_snapshot, request, root)
        activity.logger.info(
            "snapshot %s (%s)", result.snapshot_id, "reused" if result.reused else "written"
        )
        return result

    @activity.defn(name="fine_tune_bert")
    async def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        from tempotrain_workers.fine_tune import TrainerSupervisor, trainer_command

        runs_root = self._runs_root(request.runs_root)
        command = self.trainer_command or trainer_command
        return await TrainerSupervisor(request, runs_root, command).run()

    @activity.defn(name="run_bert_evaluation")
    async def run_bert_evaluation(self, request: BertEvalRequest) -> BertEvalResult:
        await ml_stack_ready()
        from tempotrain_workers.evaluation import evaluate

        return await heartbeating(
            evaluate,
            request,
            self._runs_root(request.runs_root),
            self._snapshots_root(request.snapshots_root),
        )

    @activity.defn(name="run_bert_inference")
    async def run_bert_inference(self, request: BertInferenceRequest) -> BertInferenceResult:
        await ml_stack_ready()
        from tempotrain_workers.evaluation import infer

        return await heartbeating(infer, request, self._runs_root(request.runs_root))

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.create_dataset_snapshot,
            self.fine_tune_bert,
            self.run_bert_evaluation,
            self.run_bert_inference,
        ]


class RayScalingActivities:
    """CIFAR-10 scaling on Ray; datasets are cached under `<snapshots>/datasets`."""

    def __init__(self, roots: StorageRoots) -> None:
        self.roots = roots

    @activity.defn(name="train_cifar10_scale")
    async def train_cifar10_scale(self, request: ScaleTrainRequest) -> ScaleTrainResult:
        from tempotrain_workers.scale_supervisor import ScaleSupervisor

        runs = Path(request.runs_root) if request.runs_root else self.roots.runs
        datasets = (
            Path(request.datasets_root)
            if request.datasets_root
            else self.roots.snapshots / "datasets"
        )
        return await ScaleSupervisor(request, runs, datasets).run()

    def all(self) -> list[Callable[..., Any]]:
        return [self.train_cifar10_scale]


class InferenceActivities:
    """Chunked batch inference; each worker process loads a job's model and data once."""

    def __init__(self, roots: StorageRoots) -> None:
        self.roots = roots

    @activity.defn(name="plan_inference")
    async def plan_inference(self, request: PlanRequest) -> InferencePlan:
        from tempotrain_workers.inference.chunks import plan_inference

        return await heartbeating(plan_inference, request, self.roots)

    @activity.defn(name="process_chunk")
    async def process_chunk(self, request: ChunkRequest) -> ChunkOutcome:
        from tempotrain_workers.inference.chunks import process_chunk

        outcome: ChunkOutcome = await heartbeating(process_chunk, request, self.roots)
        if not outcome.skipped:  # its own seconds: not those it waited for the device
            metrics.chunk_scored(request.job.job_id, outcome.rows, outcome.seconds)
        return outcome.model_copy(update={"attempt": activity.info().attempt})

    @activity.defn(name="merge_chunks")
    async def merge_chunks(self, request: MergeRequest) -> MergeResult:
        from tempotrain_workers.inference.chunks import merge_chunks

        return await heartbeating(merge_chunks, request, self.roots)

    def all(self) -> list[Callable[..., Any]]:
        return [self.plan_inference, self.process_chunk, self.merge_chunks]
