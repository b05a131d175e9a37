"""Temporal forgets a running experiment (its database wiped mid-run): the operator starts
the workflow again under the same id, and training resumes from the checkpoint on disk."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from tempotrain_dev.temporal_server import LocalTemporal
from tempotrain_dev.waiting import wait_for
from tempotrain_workers.sample_data import write_sentiment_jsonl

from tests.conftest import ClusterHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    conditions_by_type,
    experiment,
    experiment_status,
)
from tests.support import eventually

pytestmark = pytest.mark.kube

SAVE_STEPS = 8


def wipe(temporal: LocalTemporal) -> None:
    """A crash and an empty database: everything Temporal knew is gone; same address."""
    pid = temporal.process.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not temporal.process.is_running(), timeout=30, what="temporal gone")
    for leftover in temporal.db_file.parent.glob(f"{temporal.db_file.name}*"):
        leftover.unlink()
    temporal.up(log=lambda _: None)


async def test_a_workflow_temporal_lost_is_started_again_and_resumes(
    crds: None, cluster: ClusterHandle, namespace: str, minilm_path: Path, tmp_path: Path
) -> None:
    temporal = LocalTemporal(tmp_path / "temporal")
    temporal.up(log=lambda _: None)
    stack = Stack.fresh(
        namespace, cluster, temporal.address, tmp_path, operator_args=("--resync-seconds", "5")
    )
    write_sentiment_jsonl(stack.snapshots / "datasets" / "sentiment.jsonl", 400)
    try:
        stack.start_operator()
        stack.start_worker()
        training = {"epochs": 3, "batchSize": 8, "maxSeqLength": 32, "saveSteps": SAVE_STEPS}
        apply(
            cluster, namespace, experiment("forgotten", stack.model(minilm_path), training=training)
        )

        async def checkpointed() -> int | None:
            status = experiment_status(cluster, namespace, "forgotten")
            step: int | None = (status.get("latestCheckpoint") or {}).get("step")
            return step if step and status.get("phase") == "Training" else None

        before = await eventually(checkpointed, within=240, what="a first checkpoint")
        wipe(temporal)

        async def finished() -> dict[str, Any] | None:
            status = experiment_status(cluster, namespace, "forgotten")
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = await eventually(finished, within=300, what="Succeeded after the wipe")
        assert status["phase"] == "Succeeded", (status, stack.log("operator"))
        started = conditions_by_type(status)["WorkflowStarted"]
        assert started["reason"] == "WorkflowRestarted", started
        result = json.loads((stack.runs / "forgotten" / "result.json").read_text())
        assert result["resumed_from_step"] is not None, result  # not from scratch
        assert result["resumed_from_step"] >= before, (result["resumed_from_step"], before)
    finally:
        stack.stop_all()
        temporal.down(log=lambda _: None)
