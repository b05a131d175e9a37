"""Chunked inference: chunks merged equal one reference pass, a verified chunk is skipped, a
corrupted one is recomputed, another job's outputs are never taken for ours."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from temporalio.exceptions import ApplicationError
from tempotrain_workers.activities import StorageRoots
from tempotrain_workers.api import (
    ActivationsSpec,
    ChunkRequest,
    InferenceJob,
    MergeRequest,
    Pooling,
    RowRange,
    RowSelection,
    chunk_ranges,
)
from tempotrain_workers.inference.chunks import (
    chunk_file,
    merge_chunks,
    plan_inference,
    process_chunk,
    verified,
)


def _job(model: Path, data: Path, out: Path, pooling: Pooling = Pooling.MEAN) -> InferenceJob:
    return InferenceJob(
        job_id="binf-test",
        model_name=str(model),
        dataset_name=str(data),
        output_dir=str(out),
        text_field="sentence",
        activations=ActivationsSpec(layer=-1, pooling=pooling),
        batch_size=16,
        max_seq_length=32,
    )


# Absolute paths in these tests: the volumes are only where relative ones would resolve.
V = StorageRoots(snapshots=Path("/nonexistent/snapshots"), runs=Path("/nonexistent/runs"))


def _reference(job: InferenceJob, texts: list[str]) -> tuple[list[int], torch.Tensor]:
    """One plain pass over all rows in a single batch loop, the way a user would."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.model_name)
    model = AutoModelForSequenceClassification.from_pretrained(
        job.model_name, output_hidden_states=True
    ).eval()
    predictions, pooled = [], []
    with torch.inference_mode():
        for text in texts:  # one row at a time: no padding effects to hide behind
            batch = tokenizer([text], truncation=True, max_length=32, return_tensors="pt")
            output = model(**batch)
            predictions.append(int(output.logits.argmax(dim=-1)))
            pooled.append(output.hidden_states[-1][0].mean(dim=0))
    return predictions, torch.stack(pooled)


def test_merged_chunks_equal_a_single_reference_pass(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    from tempotrain_workers.inference.chunks import _model

    job = _job(tiny_bert, sentiment_file, tmp_path / "out")
    ranges = chunk_ranges(RowRange(start=10, end=130), 50)
    assert [(r.start, r.end) for r in ranges] == [(10, 60), (60, 110), (110, 130)]
    _model.cache_clear()
    outcomes = [process_chunk(ChunkRequest(job=job, range=r), V) for r in ranges]
    assert _model.cache_info().misses == 1  # loaded once for all chunks, not per chunk
    assert not any(o.skipped for o in outcomes)
    merged = merge_chunks(
        MergeRequest(job=job, range=RowRange(start=10, end=130), chunk_size=50), V
    )
    assert merged.rows == 120

    import json

    texts = [json.loads(line)["sentence"] for line in sentiment_file.read_text().splitlines()]
    predictions, pooled = _reference(job, texts[10:130])
    table = pq.read_table(merged.path).to_pydict()
    assert table["row"] == list(range(10, 130))  # in row order, whatever the merge order
    assert table["prediction"] == predictions
    activations = torch.tensor(table["activation"])
    assert torch.allclose(activations, pooled, atol=1e-5)
    assert not chunk_file(job, V, ranges[0]).exists()  # chunks deleted unless retained


def test_a_verified_chunk_is_skipped_and_a_corrupted_one_recomputed(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    job = _job(tiny_bert, sentiment_file, tmp_path / "out", Pooling.CLS)
    first, second = chunk_ranges(RowRange(start=0, end=40), 20)
    done = process_chunk(ChunkRequest(job=job, range=first), V)
    again = process_chunk(ChunkRequest(job=job, range=first), V)
    assert again.skipped and again.sha256 == done.sha256

    original = process_chunk(ChunkRequest(job=job, range=second), V)
    path = chunk_file(job, V, second)
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)  # a torn or bit-rotted file
    assert verified(job, V, second) is None
    redone = process_chunk(ChunkRequest(job=job, range=second), V)
    assert not redone.skipped and redone.recomputed
    assert redone.sha256 == original.sha256  # deterministic output, now intact again
    merged = merge_chunks(
        MergeRequest(job=job, range=RowRange(start=0, end=40), chunk_size=20, retain_chunks=True), V
    )
    assert merged.rows == 40 and chunk_file(job, V, first).exists()


def test_merge_refuses_chunks_that_do_not_verify(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    job = _job(tiny_bert, sentiment_file, tmp_path / "out")
    only = RowRange(start=0, end=10)
    process_chunk(ChunkRequest(job=job, range=only), V)
    chunk_file(job, V, only).unlink()
    with pytest.raises(ValueError, match="do not verify"):
        merge_chunks(MergeRequest(job=job, range=only, chunk_size=10), V)


def test_row_ranges_are_validated() -> None:
    with pytest.raises(ValueError, match="greater than start"):
        RowRange(start=5, end=5)
    with pytest.raises(ValueError, match="at least 1"):
        chunk_ranges(RowRange(start=0, end=5), 0)


def test_outputs_of_another_job_in_the_same_folder_are_recomputed_not_reused(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    cls_job = _job(tiny_bert, sentiment_file, tmp_path / "out", Pooling.CLS)
    mean_job = _job(tiny_bert, sentiment_file, tmp_path / "out", Pooling.MEAN)
    assert cls_job.fingerprint() != mean_job.fingerprint()
    rows = RowRange(start=0, end=10)
    first = process_chunk(ChunkRequest(job=cls_job, range=rows), V)
    other = process_chunk(ChunkRequest(job=mean_job, range=rows), V)
    assert not other.skipped and other.sha256 != first.sha256
    assert verified(cls_job, V, rows) is None and verified(mean_job, V, rows) is not None


def test_plan_resolves_every_row_and_finds_a_finished_output(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    from tempotrain_workers.api import PlanRequest

    job = _job(tiny_bert, sentiment_file, tmp_path / "out")
    total = len(sentiment_file.read_text().splitlines())
    plan = plan_inference(PlanRequest(job=job), V)
    assert plan.range == RowRange(start=0, end=total) and plan.existing is None
    whole = RowRange(start=0, end=30)
    ranges = chunk_ranges(whole, 15)
    for r in ranges:
        process_chunk(ChunkRequest(job=job, range=r), V)
    merged = merge_chunks(MergeRequest(job=job, range=whole, chunk_size=15), V)
    assert plan_inference(PlanRequest(job=job, range=RowSelection(end=30)), V).existing == merged
    # Another range over the same folder is a different output: not reused.
    assert plan_inference(PlanRequest(job=job, range=RowSelection(end=20)), V).existing is None
    with pytest.raises(ApplicationError, match="beyond"):
        plan_inference(PlanRequest(job=job, range=RowSelection(end=total + 1)), V)
    # A start alone runs to the split's last row.
    tail = plan_inference(PlanRequest(job=job, range=RowSelection(start=total - 5)), V)
    assert tail.range == RowRange(start=total - 5, end=total)
    with pytest.raises(ApplicationError, match="beyond"):
        plan_inference(PlanRequest(job=job, range=RowSelection(start=total)), V)


def test_relative_paths_resolve_against_the_volumes(
    tiny_bert: Path, sentiment_file: Path, tmp_path: Path
) -> None:
    import shutil

    volumes = StorageRoots(snapshots=tmp_path / "snapshots", runs=tmp_path / "runs")
    shutil.copytree(tiny_bert, volumes.runs / "trained")
    (volumes.snapshots / "data").mkdir(parents=True)
    shutil.copy(sentiment_file, volumes.snapshots / "data" / "rows.jsonl")
    job = InferenceJob(
        job_id="relative",
        model_run="trained",
        dataset_name="data/rows.jsonl",
        text_field="sentence",
        output_dir="inference/relative",
    )
    outcome = process_chunk(ChunkRequest(job=job, range=RowRange(start=0, end=5)), volumes)
    assert Path(outcome.path).parent == volumes.runs / "inference" / "relative" / "chunks"
    missing = job.model_copy(update={"model_run": "never-trained"})
    with pytest.raises(ApplicationError, match="no trained model") as raised:
        process_chunk(ChunkRequest(job=missing, range=RowRange(start=0, end=5)), volumes)
    assert raised.value.non_retryable
