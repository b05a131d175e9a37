"""What the metrics count: every step taken (those trained again after a crash again), the
steps trained again, the saves; the operator's apiserver requests from httpx's log lines."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError
from tempotrain_operator.metrics import CountKubeRequests, observe_push
from tempotrain_workers.checkpoints import marker_bytes, write_marker
from tempotrain_workers.metrics import TrainingMeter, error_type, scale_progressed


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_resumed_attempt_counts_its_steps_and_what_it_trains_again(tmp_path: Path) -> None:
    run = f"run-{uuid.uuid4().hex[:6]}"
    # The first attempt: from scratch to step 47, a save at 40.
    first = TrainingMeter(run, samples_per_step=16)
    first.started(resume_step=None, reached_before=None)
    first.progressed(20, steps_per_second=None)
    checkpoint = tmp_path / "checkpoint-40"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"x" * 1000)
    write_marker(checkpoint, step=40, epoch=1.0, loss=0.5, snapshot_hash="sha")
    first.saved(40, save_seconds=0.25, size_bytes=marker_bytes(checkpoint), write_seconds=1.5)
    first.progressed(47, steps_per_second=2.0)
    # The second resumes from 40: steps 41..47 are trained again, and counted again.
    second = TrainingMeter(run, samples_per_step=16)
    second.started(resume_step=40, reached_before=47)
    second.progressed(60, steps_per_second=4.0)

    assert sample("tempotrain_training_steps_total", run=run) == 60 + 7
    assert sample("tempotrain_resumes_total", run=run) == 1
    assert sample("tempotrain_recomputed_steps_total", run=run) == 7
    assert sample("tempotrain_training_samples_per_second", run=run) == 64
    assert sample("tempotrain_checkpoints_saved_total", run=run) == 1
    assert sample("tempotrain_checkpoint_save_seconds_sum", run=run) == 0.25
    assert sample("tempotrain_checkpoint_write_seconds_sum", run=run) == 1.5
    assert sample("tempotrain_checkpoint_bytes", run=run) == 1000


def test_a_ray_scale_reports_its_images_per_second_through_the_worker_driving_it() -> None:
    run = f"cifar-{uuid.uuid4().hex[:6]}"
    scale_progressed(run, "scale-1-2w", 2, {})  # the driver has written no progress yet
    assert (
        sample("tempotrain_scale_images_per_second", run=run, scale="scale-1-2w", workers="2")
        is None
    )
    scale_progressed(run, "scale-1-2w", 2, {"epoch": 1, "images_per_second": 0.0})
    assert sample("tempotrain_scale_epochs_done", run=run, scale="scale-1-2w") == 1
    assert (
        sample("tempotrain_scale_images_per_second", run=run, scale="scale-1-2w", workers="2")
        is None
    )
    scale_progressed(run, "scale-1-2w", 2, {"epoch": 2, "images_per_second": 812.5})
    assert (
        sample("tempotrain_scale_images_per_second", run=run, scale="scale-1-2w", workers="2")
        == 812.5
    )
    assert sample("tempotrain_scale_epochs_done", run=run, scale="scale-1-2w") == 2


def test_an_error_is_counted_by_its_type() -> None:
    assert error_type(ApplicationError("no model", type="ModelNotFound")) == "ModelNotFound"
    assert error_type(ValueError("x")) == "ValueError"


def test_httpx_request_lines_are_counted_and_kept_out_of_the_log() -> None:
    def record(message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("httpx", logging.INFO, __file__, 1, message, args, None)

    before = sample("tempotrain_operator_kube_requests_total", method="PATCH", code="409") or 0
    counting = CountKubeRequests()
    request = record('HTTP Request: %s %s "%s %d %s"', "PATCH", "https://a/b", "HTTP/1.1", 409, "")
    assert counting.filter(request) is False
    assert counting.filter(record("connection reset")) is True
    after = sample("tempotrain_operator_kube_requests_total", method="PATCH", code="409")
    assert after == before + 1


def test_a_status_push_is_counted_with_its_lag_from_the_workflow_time() -> None:
    kind = f"Kind{uuid.uuid4().hex[:6]}"
    sent = datetime.now(UTC) - timedelta(seconds=3)
    observe_push(kind, sent)
    observe_push(kind, sent.replace(tzinfo=None))  # a naive time is UTC
    assert sample("tempotrain_operator_status_pushes_total", kind=kind) == 2
    lag = sample("tempotrain_operator_status_push_lag_seconds_sum", kind=kind) or 0
    assert 6 <= lag < 20, lag
