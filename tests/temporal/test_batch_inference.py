"""BatchInferenceWorkflow on the real dev server: bounded parallelism across continue-as-new,
re-runs that skip, a corrupted chunk recomputed, a worker process killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker
from tempotrain_dev.commands import worker_command
from tempotrain_workers.activities import InferenceActivities, StorageRoots
from tempotrain_workers.api import BatchInferenceInput, ChunkSizing, InferenceJob, RowSelection
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.workflows import ALL_WORKFLOWS, BatchInferenceWorkflow

from tests.support import eventually

if TYPE_CHECKING:
    from tests.conftest import TemporalHandle

pytestmark = pytest.mark.temporal

HISTORY = Path(__file__).parent / "histories" / "batch-inference.json"


def _job(model: Path, data: Path, out: Path, **overrides: object) -> InferenceJob:
    fields: dict[str, object] = {
        "job_id": "binf-wf",
        "model_name": str(model),
        "dataset_name": str(data),
        "text_field": "sentence",
        "output_dir": str(out),
        "batch_size": 16,
        "max_seq_length": 32,
    }
    return InferenceJob.model_validate(fields | overrides)


def _worker(temporal: TemporalHandle, queue: str, tmp_path: Path, in_flight: int = 2) -> Worker:
    """An in-process inference worker on `queue`, its volumes under tmp_path."""
    return Worker(
        temporal.client,
        task_queue=queue,
        workflows=ALL_WORKFLOWS,
        activities=InferenceActivities(
            StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
        ).all(),
        max_concurrent_activities=in_flight,
    )


async def _run(temporal: TemporalHandle, request: BatchInferenceInput) -> object:
    return await temporal.client.execute_workflow(
        BatchInferenceWorkflow.run,
        request,
        id=f"binf-{uuid.uuid4().hex[:8]}",
        task_queue=request.inference_queue,
        execution_timeout=timedelta(minutes=5),
    )


async def test_chunks_run_two_at_a_time_across_continue_as_new_and_a_rerun_skips_them(
    temporal: TemporalHandle, tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    queue = f"inference-{uuid.uuid4().hex[:8]}"
    request = BatchInferenceInput(
        job=_job(tiny_bert, sentiment_file, tmp_path / "out"),
        range=RowSelection(start=0, end=200),
        chunk_size=40,
        workers=2,
        retain_chunks=True,
        inference_queue=queue,
        chunks_per_run=2,  # 5 chunks: two continue-as-new hand-overs
    )
    async with _worker(temporal, queue, tmp_path):
        first_id = f"binf-{uuid.uuid4().hex[:8]}"
        first = await temporal.client.execute_workflow(
            BatchInferenceWorkflow.run,
            request,
            id=first_id,
            task_queue=queue,
            execution_timeout=timedelta(minutes=5),
        )
        # The merged output is there: a second job over the same folder does no chunk at all.
        again = await _run(temporal, request)
        # Without it, every chunk still verifies on its own and is skipped; one corrupted
        # on disk is caught by its checksum and recomputed, and the merge is the same.
        Path(first.output.path).unlink()
        chunk = tmp_path / "out" / "chunks" / "chunk_000000080-000000120.parquet"
        chunk.write_bytes(chunk.read_bytes()[:-8] + b"\xff" * 8)
        repaired = await _run(temporal, request)
    assert first.chunks_total == 5
    assert (first.tally.completed, first.tally.skipped, first.tally.rows) == (5, 0, 200)
    assert first.tally.computed_rows == 200 and first.tally.retried == 0
    assert (again.tally.completed, again.tally.skipped) == (0, 5)  # type: ignore[attr-defined]
    assert again.output.sha256 == first.output.sha256  # type: ignore[attr-defined]
    tally = repaired.tally  # type: ignore[attr-defined]
    assert (tally.completed, tally.skipped, tally.recomputed) == (1, 4, 1)
    assert repaired.output.sha256 == first.output.sha256  # type: ignore[attr-defined]
    merged = pq.read_table(first.output.path).to_pydict()
    assert merged["row"] == list(range(200))

    # The last run of the chain (chunks after a continue-as-new, then the merge) replays.
    history = await temporal.client.get_workflow_handle(first_id).fetch_history()
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
    if os.environ.get("TEMPOTRAIN_RECORD_HISTORIES"):
        HISTORY.write_text(json.dumps(json.loads(history.to_json())))


async def test_an_unset_chunk_size_is_measured_and_a_rerun_keeps_the_recorded_one(
    temporal: TemporalHandle, tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    queue = f"inference-{uuid.uuid4().hex[:8]}"
    measured_out, given_out = tmp_path / "measured", tmp_path / "given"
    unset = BatchInferenceInput(
        job=_job(tiny_bert, sentiment_file, measured_out),
        range=RowSelection(start=0, end=200),
        workers=2,
        retain_chunks=True,
        inference_queue=queue,
    )
    given = unset.model_copy(
        update={"job": _job(tiny_bert, sentiment_file, given_out), "chunk_size": 40}
    )
    async with _worker(temporal, queue, tmp_path):
        measured = await _run(temporal, unset)
        # A job that gave 40, then its output merged away: the same job without a size
        # cuts the recorded 40-row chunks again, so every finished chunk is reused.
        first = await _run(temporal, given)
        Path(first.output.path).unlink()  # type: ignore[attr-defined]
        again = await _run(temporal, given.model_copy(update={"chunk_size": None}))

    sizing = ChunkSizing.model_validate_json((measured_out / "chunking.json").read_text())
    assert sizing.measured and sizing.device == "cpu"
    assert sizing.rows_per_second is not None and sizing.rows_per_second > 0
    # tiny BERT scores far more than 2 s worth of rows: capped at a half for each slot.
    assert measured.chunk_size == sizing.chunk_size == 100  # type: ignore[attr-defined]
    assert measured.chunks_total == 2  # type: ignore[attr-defined]
    assert pq.read_table(measured.output.path).column("row").to_pylist() == list(range(200))  # type: ignore[attr-defined]
    recorded = ChunkSizing.model_validate_json((given_out / "chunking.json").read_text())
    assert (recorded.chunk_size, recorded.measured) == (40, False)
    assert again.chunk_size == 40  # type: ignore[attr-defined]
    tally = again.tally  # type: ignore[attr-defined]
    assert (tally.completed, tally.skipped) == (0, 5)
    assert again.output.sha256 == first.output.sha256  # type: ignore[attr-defined]


async def test_committed_batch_inference_history_still_replays() -> None:
    history = WorkflowHistory.from_json("batch-inference-recorded", HISTORY.read_text())
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_bad_job_fails_with_the_reason_and_no_retries(
    temporal: TemporalHandle, tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    queue = f"inference-{uuid.uuid4().hex[:8]}"
    request = BatchInferenceInput(
        job=_job(tiny_bert, sentiment_file, tmp_path / "out", text_field="no_such_column"),
        inference_queue=queue,
    )
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    async with Worker(
        temporal.client,
        task_queue=queue,
        workflows=ALL_WORKFLOWS,
        activities=InferenceActivities(roots).all(),
    ):
        with pytest.raises(WorkflowFailureError) as raised:
            await _run(temporal, request)
    cause = raised.value.cause
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "no text column 'no_such_column'" in str(cause)


def _start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_worker_killed_mid_job_loses_at_most_its_chunks_in_flight(
    temporal: TemporalHandle, minilm_classifier: Path, tmp_path: Path
) -> None:
    """A real worker process SIGKILLed mid-job: a new one finishes it; only the chunks that
    were in flight are computed again, and the output equals an uninterrupted run's."""
    workers = 2
    queue = f"inference-{uuid.uuid4().hex[:8]}"
    data = write_sentiment_jsonl(tmp_path / "rows.jsonl", 1200)
    out = tmp_path / "out"
    request = BatchInferenceInput(
        job=_job(minilm_classifier, data, out, max_seq_length=64),
        chunk_size=40,
        workers=workers,
        retain_chunks=True,
        inference_queue=queue,
        heartbeat_timeout_seconds=3,
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [
        *worker_command(temporal.address, [queue], tmp_path / "snapshots", tmp_path / "runs"),
        "--max-concurrent-activities",
        str(workers),
    ]
    log = tmp_path / "worker.log"
    first = _start_worker(argv, env, log)
    handle = await temporal.client.start_workflow(
        BatchInferenceWorkflow.run,
        request,
        id=f"binf-kill-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        execution_timeout=timedelta(minutes=8),
    )
    second: subprocess.Popen[bytes] | None = None
    try:

        async def some_chunks_done() -> int:
            return len(list((out / "chunks").glob("*.json"))) if (out / "chunks").exists() else 0

        done_at_kill = await eventually(some_chunks_done, within=180, what="a first chunk")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert done_at_kill < 30, "the job finished before the worker could be killed"
        second = _start_worker(argv, env, log)
        result = await handle.result()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    assert result.chunks_total == 30
    assert result.tally.completed + result.tally.skipped == 30
    assert result.tally.retried <= workers, result.tally
    table = pq.read_table(result.output.path).to_pydict()
    assert table["row"] == list(range(1200))

    # The same job uninterrupted, in this process: the same bytes.
    reference_queue = f"inference-{uuid.uuid4().hex[:8]}"
    roots = StorageRoots(tmp_path / "snapshots", tmp_path / "runs")
    reference = request.model_copy(
        update={
            "job": request.job.model_copy(update={"output_dir": str(tmp_path / "reference")}),
            "inference_queue": reference_queue,
        }
    )
    async with Worker(
        temporal.client,
        task_queue=reference_queue,
        workflows=ALL_WORKFLOWS,
        activities=InferenceActivities(roots).all(),
        max_concurrent_activities=workers,
    ):
        expected = await _run(temporal, reference)
    assert pq.read_table(expected.output.path).equals(pq.read_table(result.output.path))  # type: ignore[attr-defined]
