"""Activities heartbeat from their first moment, and wait for the worker's ML import warm-up
instead of racing it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment
from tempotrain_workers import fine_tune, ml_imports
from tempotrain_workers.activities import BertActivities, StorageRoots
from tempotrain_workers.api import (
    BertFineTuneConfig,
    BertFineTuneRequest,
    DatasetSchema,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
)
from tempotrain_workers.sample_data import write_sentiment_jsonl

SCAN_HELD = "the resume scan ran without a heartbeat"


async def test_fine_tune_heartbeats_while_it_scans_for_a_checkpoint_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan hashes every checkpoint file (minutes on a large run) and torch is imported
    after it: a heartbeat must not wait for either."""
    heartbeat = threading.Event()

    def scan_after_a_heartbeat(run_dir: Path, snapshot_hash: str) -> Any:
        if not heartbeat.wait(timeout=30):
            raise TimeoutError(SCAN_HELD)
        raise LookupError("scan reached after a heartbeat")  # ends the attempt here

    monkeypatch.setattr(fine_tune, "latest_verified", scan_after_a_heartbeat)
    environment = ActivityEnvironment()
    environment.on_heartbeat = lambda *details: heartbeat.set()
    activities = BertActivities(StorageRoots(tmp_path / "snapshots", tmp_path / "runs"))
    snapshot = DatasetSnapshotResult(
        snapshot_id="s",
        snapshot_hash="h",
        path=str(tmp_path / "snapshots" / "s"),
        schema=DatasetSchema(text_field="sentence", label_field="label", num_labels=2),
        num_train_examples=1,
        num_eval_examples=1,
        reused=False,
    )
    request = BertFineTuneRequest(config=BertFineTuneConfig(run_id="r"), snapshot=snapshot)
    with pytest.raises(LookupError, match="after a heartbeat"):
        await environment.run(activities.fine_tune_bert, request)


async def test_a_snapshot_waits_for_an_ml_import_warm_up_in_progress(tmp_path: Path) -> None:
    """A worker warms its imports up in a thread while it polls; a snapshot started at that
    moment waits for it rather than meet a half-imported transformers."""
    data = write_sentiment_jsonl(tmp_path / "data.jsonl", 40)
    activities = BertActivities(StorageRoots(tmp_path / "snapshots", tmp_path / "runs"))
    request = DatasetSnapshotRequest(dataset_name=str(data))
    environment = ActivityEnvironment()
    ml_imports.import_ml_stack()  # imported already: unblocked, the snapshot takes ~1 s
    with ml_imports._lock:  # a warm-up in progress
        snapshotting = asyncio.ensure_future(
            environment.run(activities.create_dataset_snapshot, request)
        )
        done, _ = await asyncio.wait({snapshotting}, timeout=5.0)
        assert not done, "the snapshot did not wait for the import warm-up"
    result = await asyncio.wait_for(snapshotting, timeout=120)
    assert result.num_train_examples > 0
