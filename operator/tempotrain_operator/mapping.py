"""Pure translations between the CR and the workflows: spec → workflow input, and a
workflow's StatusUpdate → a `/status` merge patch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tempotrain_workers.api import (
    TERMINAL_PHASES,
    BertEvalRequest,
    BertExperimentSpec,
    BertFineTuneConfig,
    CoordinatorWorkflowConfig,
    CoordinatorWorkflowInput,
    Phase,
    StatusTarget,
    StatusUpdate,
)

KIND = "BertExperiment"


def run_id_of(name: str, spec: BertExperimentSpec) -> str:
    return spec.run_id or name


def coordinator_input(
    name: str,
    namespace: str,
    uid: str,
    spec: BertExperimentSpec,
    status_queue: str,
    training_queue: str,
    eval_queue: str,
) -> CoordinatorWorkflowInput:
    dataset = spec.dataset
    training = spec.training
    fine_tune = BertFineTuneConfig(
        run_id=run_id_of(name, spec),
        model_name=spec.model.name,
        # A file is relative to the snapshots volume; the worker resolves it there.
        dataset_name=dataset.file or dataset.name or "",
        dataset_config=None if dataset.file else dataset.config,
        train_split=dataset.train_split,
        eval_split=dataset.eval_split,
        text_field=dataset.text_field,
        label_field=dataset.label_field,
        max_seq_length=training.max_seq_length,
        num_epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        seed=training.seed,
        max_train_samples=dataset.max_train_samples,
        max_eval_samples=dataset.max_eval_samples,
        save_steps=training.save_steps,
        save_interval_minutes=training.save_interval_minutes,
        save_total_limit=training.save_total_limit,
    )
    evaluation = BertEvalRequest(
        batch_size=spec.evaluation.batch_size,
        max_eval_samples=spec.evaluation.max_eval_samples,
        max_seq_length=training.max_seq_length,
    )
    return CoordinatorWorkflowInput(
        configs=[CoordinatorWorkflowConfig(fine_tune=fine_tune, evaluation=evaluation)],
        status_target=StatusTarget(
            kind=KIND, namespace=namespace, name=name, uid=uid, queue=status_queue
        ),
        training_queue=training_queue,
        eval_queue=eval_queue,
    )


# Updates from the coordinator and its children travel separately and may arrive out of
# order: status only ever moves forward.
PHASE_RANK = {
    Phase.PENDING: 0,
    Phase.SNAPSHOTTING: 1,
    Phase.TRAINING: 2,
    Phase.EVALUATING: 3,
    Phase.SUSPENDED: 3,
    Phase.SUCCEEDED: 4,
    Phase.FAILED: 4,
}


def _rank(phase: str | None) -> int:
    try:
        return PHASE_RANK[Phase(phase)] if phase else -1
    except ValueError:
        return -1


def status_patch(update: StatusUpdate, current: dict[str, Any]) -> dict[str, Any]:
    """The `/status` fields an update sets, never moving phase, checkpoint or progress back."""
    patch: dict[str, Any] = {}
    current_phase = current.get("phase")
    terminal = current_phase in TERMINAL_PHASES
    if (
        update.phase is not None
        and not terminal
        and PHASE_RANK[update.phase] > _rank(current_phase)
    ):
        patch["phase"] = update.phase.value
        if update.phase in TERMINAL_PHASES:
            patch["completionTime"] = _timestamp(update.at)
    if update.run_id:
        patch["runId"] = update.run_id
    if update.workflow_id and update.phase == Phase.PENDING:
        patch["workflowId"] = update.workflow_id
    if update.snapshot:
        snapshot = update.snapshot
        patch["snapshot"] = {
            "id": snapshot.snapshot_id,
            "hash": snapshot.snapshot_hash,
            "numExamples": snapshot.num_train_examples,
        }
    known_step = (current.get("latestCheckpoint") or {}).get("step", -1)
    if update.latest_checkpoint and update.latest_checkpoint.step > known_step:
        checkpoint = update.latest_checkpoint
        patch["latestCheckpoint"] = {
            "step": checkpoint.step,
            "epoch": checkpoint.epoch,
            "loss": checkpoint.loss,
            "path": checkpoint.path,
            "savedAt": _timestamp(checkpoint.saved_at),
        }
    if update.checkpoints_saved is not None:
        patch["checkpointsSaved"] = update.checkpoints_saved
    if update.progress and update.progress.step >= (current.get("progress") or {}).get("step", -1):
        progress: dict[str, Any] = {"step": update.progress.step}
        if update.progress.total_steps:
            progress["totalSteps"] = update.progress.total_steps
            progress["percent"] = min(
                100, int(100 * update.progress.step / update.progress.total_steps)
            )
        patch["progress"] = progress
    if update.metrics:
        patch["metrics"] = dict(update.metrics)
        if "numEvalExamples" in patch["metrics"]:
            patch["metrics"]["numEvalExamples"] = int(patch["metrics"]["numEvalExamples"])
    if update.message:
        patch["message"] = update.message
    return patch


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
