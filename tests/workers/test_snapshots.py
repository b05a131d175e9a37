"""Content-addressed snapshots of local files (the Hub path is the same code via load_dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from tempotrain_workers.api import DatasetSnapshotRequest
from tempotrain_workers.snapshots import create_snapshot, read_split


def _request(path: Path, **overrides: object) -> DatasetSnapshotRequest:
    return DatasetSnapshotRequest(dataset_name=str(path), **overrides)  # type: ignore[arg-type]


def test_same_request_twice_gives_same_id_without_rewriting(
    sentiment_file: Path, tmp_path: Path
) -> None:
    root = tmp_path / "snapshots"
    first = create_snapshot(_request(sentiment_file), root)
    assert not first.reused
    assert first.schema_.text_field == "sentence" and first.schema_.label_field == "label"
    assert first.schema_.num_labels == 2
    assert first.num_train_examples + first.num_eval_examples == 400
    written = {p.name: p.stat().st_mtime_ns for p in Path(first.path).iterdir()}

    second = create_snapshot(_request(sentiment_file), root)
    assert second.reused
    assert (second.snapshot_id, second.snapshot_hash) == (first.snapshot_id, first.snapshot_hash)
    assert {p.name: p.stat().st_mtime_ns for p in Path(first.path).iterdir()} == written
    assert [p.name for p in root.iterdir()] == [first.snapshot_id]  # no temp dirs left


def test_changed_data_or_subsample_gives_a_new_hash(sentiment_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    original = create_snapshot(_request(sentiment_file), root)
    subsampled = create_snapshot(_request(sentiment_file, max_train_samples=50), root)
    assert subsampled.snapshot_hash != original.snapshot_hash
    assert subsampled.num_train_examples == 50

    rows = sentiment_file.read_text().splitlines()
    row = json.loads(rows[0])
    row["label"] = 1 - row["label"]
    sentiment_file.write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n")
    changed = create_snapshot(_request(sentiment_file), root)
    assert changed.snapshot_hash != original.snapshot_hash
    assert len(read_split(Path(changed.path), "train")) == changed.num_train_examples


def test_csv_and_parquet_files_load_too(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"review": ["good", "bad", "fine", "poor"] * 5, "stars": [1, 0] * 10})
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    frame.to_parquet(tmp_path / "reviews.parquet")
    csv = create_snapshot(_request(tmp_path / "reviews.csv", label_field="stars"), tmp_path / "s")
    parquet = create_snapshot(
        _request(tmp_path / "reviews.parquet", label_field="stars"), tmp_path / "s"
    )
    assert csv.schema_.text_field == parquet.schema_.text_field == "review"
    assert csv.snapshot_hash == parquet.snapshot_hash  # same content, same hash


def test_missing_file_and_missing_column_fail_non_retryable(
    sentiment_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(ApplicationError) as missing:
        create_snapshot(_request(tmp_path / "nope.jsonl"), tmp_path / "s")
    assert missing.value.non_retryable and missing.value.type == "DatasetNotFound"
    assert "nope.jsonl" in str(missing.value)

    with pytest.raises(ApplicationError) as column:
        create_snapshot(_request(sentiment_file, text_field="body"), tmp_path / "s")
    assert column.value.non_retryable and column.value.type == "DatasetSchemaError"
    assert "'body'" in str(column.value) and "sentence" in str(column.value)
