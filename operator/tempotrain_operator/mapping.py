"""Pure translations between the CR and the workflows: spec → workflow input, and a
workflow's StatusUpdate → a `/status` merge patch."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tempotrain_workers.api import (
    TERMINAL_PHASES,
    ActivationsSpec,
    BatchInferenceInput,
    BatchInferenceSpec,
    BertEvalRequest,
    BertExperimentSpec,
    BertFineTuneConfig,
    CheckpointInfo,
    Cifar10ScalingInput,
    Cifar10ScalingSpec,
    CoordinatorWorkflowConfig,
    CoordinatorWorkflowInput,
    InferenceJob,
    InferenceProgress,
    Phase,
    Progress,
    RayScaleConfig,
    RowSelection,
    ScaleOutcome,
    StatusTarget,
    StatusUpdate,
    SweepPolicy,
    SweepProgress,
    TrialParameters,
    trials_of,
    worker_concurrency,
)
from tempotrain_workers.history import history_file

KIND = "BertExperiment"
SCALING_KIND = "Cifar10Scaling"
INFERENCE_KIND = "BatchInference"


def run_id_of(name: str, spec: BertExperimentSpec) -> str:
    return spec.run_id or name


def first_status(name: str, spec: BertExperimentSpec, runs_claim: str) -> dict[str, Any]:
    """What `.status` says before the workflow does: where the history is kept and, for a
    sweep, its trials (parameters and run ids), Pending."""
    run_id = run_id_of(name, spec)
    status: dict[str, Any] = {"runsClaim": runs_claim}
    if spec.sweep is None:
        return status | {"historyFile": history_file(run_id)}
    trials = trials_of(run_id, spec.sweep)
    rows = {
        trial.name: {
            "index": trial.index,
            "runId": trial.run_id,
            "parameters": trial.parameters.wire(),
            "phase": Phase.PENDING.value,
            "historyFile": history_file(trial.run_id),
        }
        for trial in trials
    }
    return status | {
        "trials": {"total": len(trials), "running": 0, "succeeded": 0, "failed": 0, "stopped": 0},
        "trialRuns": rows,
        "displayTrials": f"0/{len(trials)}",
    }


def coordinator_input(
    name: str,
    namespace: str,
    uid: str,
    spec: BertExperimentSpec,
    status_queue: str,
    training_queue: str,
    eval_queue: str,
) -> CoordinatorWorkflowInput:
    target = StatusTarget(kind=KIND, namespace=namespace, name=name, uid=uid, queue=status_queue)
    run_id = run_id_of(name, spec)
    if spec.sweep is None:
        configs = [_coordinator_config(spec, run_id, TrialParameters())]
    else:
        configs = [
            _coordinator_config(spec, trial.run_id, trial.parameters, trial.name)
            for trial in trials_of(run_id, spec.sweep)
        ]
    sweep = spec.sweep
    stopping = sweep.early_stopping if sweep else None
    return CoordinatorWorkflowInput(
        configs=configs,
        status_target=target,
        training_queue=training_queue,
        eval_queue=eval_queue,
        sweep=None
        if sweep is None
        else SweepPolicy(
            max_parallel=sweep.max_parallel,
            objective=sweep.objective,
            max_failed_trials=sweep.max_failed_trials,
            stop_after_evaluations=stopping.min_evaluations if stopping else None,
            stop_min_trials=stopping.min_trials if stopping else 2,
        ),
    )


def _coordinator_config(
    spec: BertExperimentSpec, run_id: str, trial: TrialParameters, name: str | None = None
) -> CoordinatorWorkflowConfig:
    """One training and evaluation: the spec's, with a trial's parameters over it."""
    dataset = spec.dataset
    training = spec.training.model_copy(
        update={
            "learning_rate": trial.learning_rate or spec.training.learning_rate,
            "batch_size": trial.batch_size or spec.training.batch_size,
            "epochs": trial.epochs or spec.training.epochs,
            "seed": spec.training.seed if trial.seed is None else trial.seed,
            "warmup_ratio": _given(trial.warmup_ratio, spec.training.warmup_ratio),
            "weight_decay": _given(trial.weight_decay, spec.training.weight_decay),
        }
    )
    fine_tune = BertFineTuneConfig(
        run_id=run_id,
        model_name=trial.model or spec.model.name,
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
        warmup_ratio=training.warmup_ratio,
        weight_decay=training.weight_decay,
        max_train_samples=dataset.max_train_samples,
        max_eval_samples=dataset.max_eval_samples,
        save_steps=training.save_steps,
        save_interval_minutes=training.save_interval_minutes,
        save_total_limit=training.save_total_limit,
        eval_steps=spec.sweep.early_stopping.eval_steps
        if spec.sweep and spec.sweep.early_stopping
        else None,
        heartbeat_timeout_seconds=training.heartbeat_timeout_seconds,
        max_failures_without_progress=training.max_failures_without_progress,
    )
    evaluation = BertEvalRequest(
        batch_size=spec.evaluation.batch_size,
        max_eval_samples=spec.evaluation.max_eval_samples,
        max_seq_length=training.max_seq_length,
    )
    return CoordinatorWorkflowConfig(fine_tune=fine_tune, evaluation=evaluation, trial=name)


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def scaling_input(
    name: str,
    namespace: str,
    uid: str,
    spec: Cifar10ScalingSpec,
    ray_address: str,
    status_queue: str,
) -> Cifar10ScalingInput:
    return Cifar10ScalingInput(
        experiment_name=spec.experiment_name or name,
        run_id=name,
        scales=[RayScaleConfig.model_validate(s.model_dump()) for s in spec.scales],
        dataset=spec.dataset.name,
        **({"synthetic_size": spec.dataset.size} if spec.dataset.size else {}),
        model=spec.model,
        use_gpu=spec.use_gpu,
        random_seed=spec.random_seed,
        learning_rate=spec.learning_rate,
        ray_address=ray_address,
        max_failures=spec.max_failures,
        status_target=StatusTarget(
            kind=SCALING_KIND, namespace=namespace, name=name, uid=uid, queue=status_queue
        ),
    )


def inference_input(
    name: str,
    namespace: str,
    uid: str,
    spec: BatchInferenceSpec,
    model_run: str | None,
    status_queue: str,
    inference_queue: str,
) -> BatchInferenceInput:
    """`model_run`: the finished run of `model.fromExperiment`, resolved by the handler."""
    dataset = spec.dataset
    activations = spec.outputs.activations
    job = InferenceJob(
        job_id=name,
        model_run=model_run,
        model_name=None if model_run else spec.model.name,
        dataset_name=dataset.file or dataset.name or "",
        dataset_config=None if dataset.file else dataset.config,
        split=dataset.split,
        text_field=dataset.text_field,
        output_dir=spec.output_path(name),
        activations=ActivationsSpec.model_validate(activations.model_dump())
        if activations
        else None,
        batch_size=spec.batch_size,
        max_seq_length=spec.max_seq_length,
    )
    whole = spec.range
    return BatchInferenceInput(
        job=job,
        range=RowSelection(start=whole.start, end=whole.end),
        chunk_size=spec.chunk_size,
        # Chunks in flight: one per GPU of every pod (the CPU of one without), and one more
        # per pod being prepared meanwhile.
        workers=spec.workers * worker_concurrency(spec.gpus_per_worker),
        retain_chunks=spec.retain_chunks,
        inference_queue=inference_queue,
        status_target=StatusTarget(
            kind=INFERENCE_KIND, namespace=namespace, name=name, uid=uid, queue=status_queue
        ),
    )


# Updates from the coordinator and its children travel separately and may arrive out of
# order: status only ever moves forward.
PHASE_RANK = {
    Phase.PENDING: 0,
    Phase.SNAPSHOTTING: 1,
    Phase.TRAINING: 2,
    Phase.RUNNING: 2,
    Phase.EVALUATING: 3,
    Phase.SUSPENDED: 3,
    Phase.QUEUED: 3,
    Phase.SUCCEEDED: 4,
    Phase.FAILED: 4,
    # Deleting outranks what a cancelled workflow reports on its way out (it would say Failed).
    Phase.TERMINATING: 4,
    Phase.CANCELLED: 5,
}


def _rank(phase: str | None) -> int:
    try:
        return PHASE_RANK[Phase(phase)] if phase else -1
    except ValueError:
        return -1


def phase_moves(update: Phase, current: str | None, suspend_wanted: bool) -> bool:
    """Whether a pushed phase replaces the current one: only forward, never out of an end.
    `Suspended` is the workflow saying its work has stopped: taken while a suspension is
    wanted (from any phase the run has), never after a resume (a late push). A resume sets
    `Pending` again, so the phase the workflow goes on with moves forward from there."""
    if current in TERMINAL_PHASES:
        return False
    if current == Phase.TERMINATING:  # deleted: only its end replaces it
        return update == Phase.CANCELLED
    if update == Phase.SUSPENDED:
        return suspend_wanted and current not in (Phase.SUSPENDED, Phase.QUEUED)
    return PHASE_RANK[update] > _rank(current)


def status_patch(
    update: StatusUpdate, current: dict[str, Any], suspend_wanted: bool = False
) -> dict[str, Any]:
    """The `/status` fields an update sets, never moving phase, checkpoint or progress back."""
    patch: dict[str, Any] = {}
    if update.phase is not None and phase_moves(update.phase, current.get("phase"), suspend_wanted):
        patch["phase"] = update.phase.value
        if update.phase in TERMINAL_PHASES:
            patch["completionTime"] = _timestamp(update.at)
        if update.phase != Phase.TRAINING:
            patch["eta"] = None  # time left is for a run that trains (null: removed)
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
    if update.latest_checkpoint:
        patch |= checkpoint_patch(update.latest_checkpoint, latest_step(current))
    if update.checkpoints_saved is not None:
        patch["checkpointsSaved"] = update.checkpoints_saved
    if update.progress:
        patch |= progress_patch(update.progress, current, update.at)
    if update.retry is not None:
        patch["attempts"] = update.retry.attempts
        if update.retry.last_failure is not None:
            failure = update.retry.last_failure
            patch["lastFailure"] = {
                "reason": failure.reason,
                "message": failure.message,
                "time": _timestamp(failure.at),
            }
    if update.metrics:
        patch["metrics"] = dict(update.metrics)
        if "numEvalExamples" in patch["metrics"]:
            patch["metrics"]["numEvalExamples"] = int(patch["metrics"]["numEvalExamples"])
        patch |= metrics_display(patch["metrics"])
    if update.current_scale is not None:
        patch["currentScale"] = update.current_scale
    if update.total_scales is not None:
        # Finished scales only ever grow: a stale update does not move `done` back.
        reported = len(update.scale_results) if update.scale_results is not None else 0
        done = max(reported, len(current.get("results") or []))
        patch["done"] = f"{done}/{update.total_scales}"
    if update.scale_results is not None and len(update.scale_results) >= len(
        current.get("results") or []
    ):
        patch |= scaling_results_patch(update.scale_results)
    if update.inference is not None:
        patch |= inference_patch(update.inference, current)
    if update.sweep is not None:
        patch |= sweep_patch(update.sweep, current)
    if update.message:
        patch["message"] = update.message
    return patch


# What a trial's own updates may set in its row (the rest is the experiment's).
TRIAL_FIELDS = frozenset(
    {
        "phase",
        "progress",
        "latestCheckpoint",
        "metrics",
        "attempts",
        "lastFailure",
        "message",
        "eta",
    }
)
ACTIVE_TRIAL_PHASES = frozenset(
    {Phase.SNAPSHOTTING, Phase.TRAINING, Phase.EVALUATING, Phase.SUSPENDED}
)


def trial_patch(
    update: StatusUpdate, current: dict[str, Any], suspend_wanted: bool = False
) -> dict[str, Any]:
    """A sweep trial's update as a patch of its row in `trialRuns`, and of the experiment's
    phase where the trials now imply another: Training once one trains, Suspended once
    every active trial is (that is when the operator may take its compute away)."""
    name = update.target.trial
    assert name is not None
    rows: dict[str, Any] = current.get("trialRuns") or {}
    row = dict(rows.get(name) or {})
    if row.get("phase") == Phase.SUSPENDED and not suspend_wanted:
        row["phase"] = Phase.PENDING.value  # resumed: it goes on from where it held
    fields = {
        k: v for k, v in status_patch(update, row, suspend_wanted).items() if k in TRIAL_FIELDS
    }
    if not fields:
        return {}
    patch: dict[str, Any] = {"trialRuns": {name: fields}}
    after = {**rows, name: {**row, **fields}}
    phase = sweep_phase(after, current.get("phase"), suspend_wanted)
    if phase is not None:
        patch["phase"] = phase.value
        if phase != Phase.TRAINING:
            patch["eta"] = None
    return patch


def sweep_phase(rows: Mapping[str, Any], current: str | None, suspend_wanted: bool) -> Phase | None:
    """The experiment's phase its trials imply, when it moves there; None: it stays."""
    active = [p for p in map(_phase_of, rows.values()) if p in ACTIVE_TRIAL_PHASES]
    if suspend_wanted:
        implied = Phase.SUSPENDED if active and set(active) == {Phase.SUSPENDED} else None
    else:
        implied = Phase.TRAINING if set(active) - {Phase.SUSPENDED} else None
    if implied is None or not phase_moves(implied, current, suspend_wanted):
        return None
    return implied


def _phase_of(row: Mapping[str, Any]) -> Phase | None:
    try:
        return Phase(str(row.get("phase")))
    except ValueError:
        return None


def sweep_patch(sweep: SweepProgress, current: Mapping[str, Any]) -> dict[str, Any]:
    """Trial counts, the best trial (with its parameters, from its row) and their columns."""
    done = sweep.succeeded + sweep.failed + sweep.stopped
    patch: dict[str, Any] = {
        "trials": {
            "total": sweep.total,
            "running": sweep.running,
            "succeeded": sweep.succeeded,
            "failed": sweep.failed,
            "stopped": sweep.stopped,
        },
        "displayTrials": f"{done}/{sweep.total}",
    }
    best = sweep.best
    if best is not None and best.value is not None:
        row = (current.get("trialRuns") or {}).get(best.name) or {}
        patch["bestTrial"] = {
            "name": best.name,
            "runId": best.run_id,
            "objective": sweep.objective.value,
            "value": best.value,
            "parameters": row.get("parameters") or {},
        }
        patch["displayBest"] = f"{best.name} {shown(best.value)}"
    return patch


def latest_step(status: Mapping[str, Any]) -> int:
    """The step of the checkpoint `.status` reports; -1 when none yet."""
    step: int = (status.get("latestCheckpoint") or {}).get("step", -1)
    return step


def checkpoint_patch(checkpoint: CheckpointInfo, known_step: int) -> dict[str, Any]:
    """`latestCheckpoint`, only ever moving forward (past `known_step`)."""
    if checkpoint.step <= known_step:
        return {}
    patch: dict[str, Any] = {
        "latestCheckpoint": {
            "step": checkpoint.step,
            "epoch": checkpoint.epoch,
            "loss": checkpoint.loss,
            "path": checkpoint.path,
            "savedAt": _timestamp(checkpoint.saved_at),
        }
    }
    if checkpoint.loss is not None:
        patch["displayLoss"] = shown(checkpoint.loss)
    return patch


def shown(value: float) -> str:
    """A float as `kubectl get` shows it: 4 significant digits (the status keeps them all)."""
    return f"{value:.4g}"


def metrics_display(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The printer column's copy of the eval accuracy, rounded."""
    accuracy = metrics.get("evalAccuracy")
    return {} if accuracy is None else {"displayAccuracy": shown(float(accuracy))}


def progress_patch(update: Progress, current: dict[str, Any], at: datetime) -> dict[str, Any]:
    """`progress` (step, total, percent, the trainer's recent steps/s); unchanged: nothing.
    Two sources feed it: a checkpoint's push (its step, often no total or rate) and the
    attempt's heartbeat (all of them, but up to a throttle interval late). The step only moves
    forward, and what one source lacks the other's last word keeps. With a rate, the
    estimated completion time (as of `at`) and the time left for the ETA column."""
    known = current.get("progress") or {}
    step = max(update.step, known.get("step", -1))
    total = update.total_steps or known.get("totalSteps")
    rate = update.steps_per_second or known.get("stepsPerSecond")
    progress: dict[str, Any] = {"step": step}
    if total:
        progress["totalSteps"] = total
        progress["percent"] = min(100, int(100 * step / total))
    if rate:
        progress["stepsPerSecond"] = round(rate, 3)
    if progress == known:
        return {}
    patch: dict[str, Any] = {"progress": progress}
    if rate and total:
        left = max(0, total - step) / rate
        patch["estimatedCompletionTime"] = _timestamp(at + timedelta(seconds=left))
        patch["eta"] = duration(left)
    return patch


def duration(seconds: float) -> str:
    """Time left as `kubectl get` shows ages: 45s, 3m20s, 2h05m, 3d4h."""
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def inference_patch(progress: InferenceProgress, current: dict[str, Any]) -> dict[str, Any]:
    """Chunk counts (never moving back), rows/s and, at the end, the merged output."""
    patch: dict[str, Any] = {}
    done = progress.completed + progress.skipped
    known = current.get("chunks") or {}
    if done >= known.get("completed", 0) + known.get("skipped", 0):
        patch["chunks"] = {
            **({"size": progress.chunk_size} if progress.chunk_size else {}),
            "total": progress.total,
            "completed": progress.completed,
            "skipped": progress.skipped,
            "failed": progress.failed,
        }
        patch["chunksDone"] = f"{done}/{progress.total}"
        if progress.rows_per_second is not None:
            patch["rowsPerSecond"] = progress.rows_per_second
    if progress.output is not None:
        patch["output"] = progress.output.model_dump(mode="json")
    return patch


def scaling_results_patch(outcomes: list[ScaleOutcome]) -> dict[str, Any]:
    """`results[]` plus the printer columns' summary fields (a list cannot be max'ed there)."""
    rows = [
        outcome.model_dump(mode="json", by_alias=True, exclude_none=True) for outcome in outcomes
    ]
    patch: dict[str, Any] = {"results": rows}
    if outcomes:
        patch["bestAccuracy"] = round(max(o.test_accuracy for o in outcomes), 4)
        patch["bestSpeedup"] = round(max(o.speedup for o in outcomes), 3)
    return patch


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
