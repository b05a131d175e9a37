"""BERT workflows on the real dev server with the real HF Trainer (MiniLM or a tiny BERT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker
from tempotrain_dev.commands import worker_command
from tempotrain_dev.history_sim import StatusRecorder
from tempotrain_dev.processes import pids_running
from tempotrain_operator.bert_experiment import derive_status
from tempotrain_workers.activities import BertActivities, StorageRoots
from tempotrain_workers.api import (
    BertFineTuneConfig,
    BertInferenceRequest,
    BertTrainingInput,
    CoordinatorWorkflowConfig,
    CoordinatorWorkflowInput,
    Phase,
    StatusTarget,
)
from tempotrain_workers.checkpoints import checkpoint_dirs, verify
from tempotrain_workers.workflows import (
    ALL_WORKFLOWS,
    BertInferenceWorkflow,
    CheckpointedBertTrainingWorkflow,
    CoordinatorWorkflow,
)

from tests.support import eventually

if TYPE_CHECKING:
    from tests.conftest import TemporalHandle

pytestmark = pytest.mark.temporal
HISTORIES = Path(__file__).parent / "histories"
TRAINER_MODULE = "tempotrain_workers.trainer_main"
RECORDED = ["coordinator", "training", "evaluation", "inference"]


def _queues() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"training": f"train-{suffix}", "eval": f"eval-{suffix}", "status": f"op-{suffix}"}


@asynccontextmanager
async def bert_workers(
    client: Client, roots: StorageRoots, queues: dict[str, str], recorder: StatusRecorder
) -> AsyncIterator[None]:
    activities = BertActivities(roots).all()
    workers = [
        Worker(
            client, task_queue=queues["training"], workflows=ALL_WORKFLOWS, activities=activities
        ),
        Worker(client, task_queue=queues["eval"], workflows=ALL_WORKFLOWS, activities=activities),
        Worker(client, task_queue=queues["status"], activities=[recorder.publish_status]),
    ]
    async with workers[0], workers[1], workers[2]:
        yield


def _config(model: Path, data: Path, **overrides: Any) -> BertFineTuneConfig:
    settings: dict[str, Any] = {
        "model_name": str(model),
        "dataset_name": str(data),
        "dataset_config": None,
        "num_epochs": 1,
        "batch_size": 16,
        "learning_rate": 5e-5,
        "max_seq_length": 32,
        "save_steps": 8,
        "heartbeat_timeout_seconds": 10,
    }
    return BertFineTuneConfig(**(settings | overrides))


async def test_coordinator_trains_evaluates_reports_and_replays(
    temporal: TemporalHandle, minilm_path: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    queues, recorder = _queues(), StatusRecorder()
    target = StatusTarget(kind="BertExperiment", namespace="ns", name="exp", queue=queues["status"])
    request = CoordinatorWorkflowInput(
        configs=[
            CoordinatorWorkflowConfig(
                fine_tune=_config(minilm_path, sentiment_file, run_id="e2e-run")
            )
        ],
        training_queue=queues["training"],
        eval_queue=queues["eval"],
        status_target=target,
    )
    workflow_id = f"coordinator-{uuid.uuid4().hex[:8]}"
    client = temporal.client
    async with bert_workers(client, roots, queues, recorder):
        result = await client.execute_workflow(
            CoordinatorWorkflow.run,
            request,
            id=workflow_id,
            task_queue=queues["eval"],
            execution_timeout=timedelta(minutes=10),
        )
        run = result.runs[0]
        assert run.evaluation.accuracy > 0.8, run.evaluation  # chance is 0.5
        assert run.evaluation.num_examples == 40  # the 10 % held out of 400 rows
        run_dir = roots.runs / "e2e-run"
        assert (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file()
        assert checkpoint_dirs(run_dir), "no checkpoint-<step> directories"
        assert run.training.checkpoints_saved >= 2

        child = client.get_workflow_handle(f"{workflow_id}-train-0")
        latest = await child.query(CheckpointedBertTrainingWorkflow.get_latest_checkpoint)
        assert latest is not None and latest.step == run.training.global_step
        assert Path(latest.path).parent == run_dir

        inference_id = f"inference-{uuid.uuid4().hex[:8]}"
        inference = await client.execute_workflow(
            BertInferenceWorkflow.run,
            BertInferenceRequest(
                run_id="e2e-run", texts=["the film was wonderful", "the plot was dreadful"]
            ),
            id=inference_id,
            task_queue=queues["eval"],
        )
        assert [p.label for p in inference.predictions] == [1, 0]

    phases = [u.phase for u in recorder.updates if u.phase is not None]
    assert phases[0] == Phase.PENDING and phases[-1] == Phase.SUCCEEDED
    assert Phase.TRAINING in phases and Phase.EVALUATING in phases
    assert any(u.latest_checkpoint is not None for u in recorder.updates)
    assert recorder.updates[-1].metrics["evalAccuracy"] == run.evaluation.accuracy  # type: ignore[index]

    # The operator's resync derives the same outcome from the workflow alone.
    derived = await derive_status(client, workflow_id, known_step=-1)
    assert derived["phase"] == "Succeeded"
    assert derived["metrics"]["evalAccuracy"] == run.evaluation.accuracy

    # Determinism: every workflow's recorded history replays against the current code.
    workflow_ids = [workflow_id, f"{workflow_id}-train-0", f"{workflow_id}-eval-0", inference_id]
    histories = [await client.get_workflow_handle(w).fetch_history() for w in workflow_ids]
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    for history in histories:
        await replayer.replay_workflow(history)
    if os.environ.get("TEMPOTRAIN_RECORD_HISTORIES"):  # refresh the committed fixtures
        HISTORIES.mkdir(exist_ok=True)
        for name, history in zip(RECORDED, histories, strict=True):
            (HISTORIES / f"{name}.json").write_text(history.to_json())
        ids = dict(zip(RECORDED, workflow_ids, strict=True))  # child ids derive from them
        (HISTORIES / "workflow-ids.json").write_text(json.dumps(ids, indent=2) + "\n")


async def test_committed_histories_still_replay() -> None:
    """Histories recorded from an earlier version of the workflows: a change that makes them
    non-deterministic (and would break running experiments on upgrade) fails here."""
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    ids = json.loads((HISTORIES / "workflow-ids.json").read_text())
    for name in RECORDED:
        history = WorkflowHistory.from_json(ids[name], (HISTORIES / f"{name}.json").read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{name}: {result.replay_failure}"


async def test_bad_input_fails_fast_without_retrying(
    temporal: TemporalHandle, minilm_path: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="learning_rate"):
        _config(minilm_path, sentiment_file, learning_rate=5)

    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    queues, recorder = _queues(), StatusRecorder()
    client = temporal.client
    async with bert_workers(client, roots, queues, recorder):
        # A raw payload that skipped client-side validation fails the workflow, not a retry loop.
        raw = _config(minilm_path, sentiment_file).model_dump() | {"learning_rate": 5}
        with pytest.raises(WorkflowFailureError) as invalid:
            await client.execute_workflow(
                "CheckpointedBertTrainingWorkflow",
                {"config": raw},
                id=f"bad-lr-{uuid.uuid4().hex[:8]}",
                task_queue=queues["training"],
                execution_timeout=timedelta(seconds=60),
            )
        assert "learning_rate" in str(invalid.value.cause)

        cases = {
            "DatasetNotFound": (_config(minilm_path, tmp_path / "missing.jsonl"), "missing.jsonl"),
            "DatasetSchemaError": (
                _config(minilm_path, sentiment_file, text_field="body"),
                "'body'",
            ),
            "ModelNotFound": (_config(tmp_path / "no-model", sentiment_file), "no-model"),
        }
        for error_type, (config, named) in cases.items():
            workflow_id = f"bad-{error_type.lower()}-{uuid.uuid4().hex[:8]}"
            with pytest.raises(WorkflowFailureError) as failure:
                await client.execute_workflow(
                    CheckpointedBertTrainingWorkflow.run,
                    BertTrainingInput(config=config, snapshot_queue=queues["eval"]),
                    id=workflow_id,
                    task_queue=queues["training"],
                    execution_timeout=timedelta(seconds=120),
                )
            root = failure.value.cause
            while root.__cause__ is not None:
                root = root.__cause__
            assert getattr(root, "type", None) == error_type, root
            assert named in str(root)
            attempts = [
                e.activity_task_started_event_attributes.attempt
                async for e in client.get_workflow_handle(workflow_id).fetch_history_events()
                if e.HasField("activity_task_started_event_attributes")
            ]
            assert attempts and max(attempts) == 1, f"{error_type} was retried: {attempts}"
            assert (await derive_status(client, workflow_id, -1))["phase"] == "Failed"


def _start_worker_process(
    temporal_address: str, roots: StorageRoots, queues: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(
            temporal_address, [queues["training"], queues["eval"]], roots.snapshots, roots.runs
        ),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


async def test_sigkilled_worker_resumes_from_its_last_checkpoint(
    temporal: TemporalHandle, minilm_path: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    queues = _queues()
    save_steps = 8
    config = _config(
        minilm_path,
        sentiment_file,
        run_id="crash-run",
        num_epochs=3,
        batch_size=8,
        save_steps=save_steps,
        heartbeat_timeout_seconds=5,
    )
    handle = await temporal.client.start_workflow(
        CheckpointedBertTrainingWorkflow.run,
        BertTrainingInput(config=config, snapshot_queue=queues["eval"]),
        id=f"crash-{uuid.uuid4().hex[:8]}",
        task_queue=queues["training"],
        execution_timeout=timedelta(minutes=10),
    )
    log = tmp_path / "worker.log"
    first = _start_worker_process(temporal.address, roots, queues, log)
    run_dir = roots.runs / "crash-run"
    try:

        async def checkpoint_signalled() -> Any:
            return await handle.query(CheckpointedBertTrainingWorkflow.get_latest_checkpoint)

        await eventually(checkpoint_signalled, within=180, what="a first checkpoint")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    async def trainer_gone() -> bool:
        return not pids_running(TRAINER_MODULE)

    await eventually(trainer_gone, within=15, what="the orphaned trainer to die with its worker")
    reached = json.loads((run_dir / "progress.json").read_text())["step"]
    assert reached < 3 * 50, "training finished before the kill; the test proves nothing"

    second = _start_worker_process(temporal.address, roots, queues, log)
    try:
        result = await handle.result()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert result.resumed_from_step is not None and result.resumed_from_step > 0
    assert reached - result.resumed_from_step <= save_steps, (reached, result.resumed_from_step)
    assert result.global_step == result.total_steps


async def test_cancellation_saves_a_final_checkpoint_and_stops_the_trainer(
    temporal: TemporalHandle, minilm_path: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    queues, recorder = _queues(), StatusRecorder()
    # save_steps far beyond the run: any checkpoint on disk must come from the SIGTERM save.
    config = _config(
        minilm_path,
        sentiment_file,
        run_id="cancel-run",
        num_epochs=3,
        batch_size=8,
        save_steps=10_000,
    )
    client = temporal.client
    run_dir = roots.runs / "cancel-run"
    async with bert_workers(client, roots, queues, recorder):
        handle = await client.start_workflow(
            CheckpointedBertTrainingWorkflow.run,
            BertTrainingInput(config=config, snapshot_queue=queues["eval"]),
            id=f"cancel-{uuid.uuid4().hex[:8]}",
            task_queue=queues["training"],
            execution_timeout=timedelta(minutes=10),
        )

        async def training_underway() -> bool:
            progress = run_dir / "progress.json"
            return progress.exists() and json.loads(progress.read_text())["step"] >= 5

        await eventually(training_underway, within=120, what="training to pass step 5")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    saved = checkpoint_dirs(run_dir)
    assert len(saved) == 1, saved
    info = verify(saved[0])
    assert info is not None and info.step >= 5
    assert pids_running(TRAINER_MODULE, str(run_dir)) == []
