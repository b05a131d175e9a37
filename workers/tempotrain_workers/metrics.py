"""Prometheus metrics of a worker process, and the `/metrics` endpoint that the worker and
the operator each serve on their `--metrics-port`.

The trainer is a child process; what it does reaches these through its stdout events, which
the worker's supervisor reads anyway (`fine_tune.TrainerSupervisor`). Labelled by `run` (the
run id: an experiment, or a sweep's trial), which stays few per worker: one job at a time."""

from __future__ import annotations

import argparse
import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

TRAINING_STEPS = Counter(
    "tempotrain_training_steps", "Optimizer steps the trainer reported", ["run"]
)
STEPS_PER_SECOND = Gauge(
    "tempotrain_training_steps_per_second", "The trainer's step rate over its last minute", ["run"]
)
SAMPLES_PER_SECOND = Gauge(
    "tempotrain_training_samples_per_second",
    "Training samples per second: steps/s x the configured batch size (one process's)",
    ["run"],
)
CHECKPOINTS_SAVED = Counter(
    "tempotrain_checkpoints_saved", "Checkpoints saved and verified (marker written)", ["run"]
)
_SAVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CHECKPOINT_SAVE_SECONDS = Histogram(
    "tempotrain_checkpoint_save_seconds",
    "How long a save held the training loop: the copy of its state to host memory (a "
    "synchronous save: the whole write and marker)",
    ["run"],
    buckets=_SAVE_BUCKETS,
)
CHECKPOINT_WRITE_SECONDS = Histogram(
    "tempotrain_checkpoint_write_seconds",
    "A checkpoint written in the background, overlapped with training: files, fsync, marker",
    ["run"],
    buckets=_SAVE_BUCKETS,
)
CHECKPOINT_BYTES = Gauge("tempotrain_checkpoint_bytes", "Size of the newest checkpoint", ["run"])
RESUMES = Counter("tempotrain_resumes", "Training attempts that resumed from a checkpoint", ["run"])
RECOMPUTED_STEPS = Counter(
    "tempotrain_recomputed_steps",
    "Steps an attempt trains again: the last one had reached them past its last checkpoint",
    ["run"],
)
INFERENCE_ROWS = Counter("tempotrain_inference_rows", "Rows scored by batch inference", ["job"])
INFERENCE_ROWS_PER_SECOND = Gauge(
    "tempotrain_inference_rows_per_second", "Rows per second of the last chunk scored", ["job"]
)
# Ray Train's figures, from the progress file its rank 0 writes each epoch: the worker that
# drives the Ray job reports them (the Ray workers themselves serve no TempoTrain metrics).
SCALE_IMAGES_PER_SECOND = Gauge(
    "tempotrain_scale_images_per_second",
    "Images per second of a Cifar10Scaling scale, all of its Ray workers together, inside "
    "the training loops (what its speedup is computed from)",
    ["run", "scale", "workers"],
)
SCALE_EPOCHS = Gauge(
    "tempotrain_scale_epochs_done", "Epochs a Cifar10Scaling scale has finished", ["run", "scale"]
)
ACTIVITY_FAILURES = Counter(
    "tempotrain_activity_failures",
    "Activity executions that failed, by activity and error type",
    ["activity", "error_type"],
)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """`GET /metrics` on `port`, from a thread of its own: a busy event loop still answers."""
    start_http_server(port, addr)


def error_type(err: BaseException) -> str:
    """An ApplicationError's own type (`ModelNotFound`, `HeartbeatTimeout`), else the class."""
    found = getattr(err, "type", None)
    return found if isinstance(found, str) and found else type(err).__name__


class CountFailures(Interceptor):
    """Counts every activity execution that raises, by its error type (a cancellation
    included: on a worker that shuts down, it is how the trainer's save ended)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountingInbound(next)


class _CountingInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except BaseException as err:
            ACTIVITY_FAILURES.labels(activity.info().activity_type, error_type(err)).inc()
            raise


class TrainingMeter:
    """One training attempt's contribution to the metrics, fed by its supervisor."""

    def __init__(self, run: str, samples_per_step: int) -> None:
        self.run = run
        self.samples_per_step = samples_per_step
        self.counted_step: int | None = None

    def started(self, resume_step: int | None, reached_before: int | None) -> None:
        """The attempt starts from `resume_step` (None: from scratch); the one before it had
        reached `reached_before`: what lies between is trained again."""
        self.counted_step = resume_step or 0
        if resume_step is not None:
            RESUMES.labels(self.run).inc()
        if reached_before is not None and reached_before > (resume_step or 0):
            RECOMPUTED_STEPS.labels(self.run).inc(reached_before - (resume_step or 0))

    def progressed(self, step: int, steps_per_second: float | None) -> None:
        if self.counted_step is not None and step > self.counted_step:
            TRAINING_STEPS.labels(self.run).inc(step - self.counted_step)
            self.counted_step = step
        if steps_per_second is not None:
            STEPS_PER_SECOND.labels(self.run).set(steps_per_second)
            SAMPLES_PER_SECOND.labels(self.run).set(steps_per_second * self.samples_per_step)

    def saved(
        self,
        step: int,
        save_seconds: float | None,
        size_bytes: int | None,
        write_seconds: float | None = None,
    ) -> None:
        """The figures as the trainer's event carries them: by the time the event is read
        the checkpoint may be rotated away already (a fast trainer keeping few), so nothing
        here reads the disk."""
        self.progressed(step, None)
        CHECKPOINTS_SAVED.labels(self.run).inc()
        if save_seconds is not None:
            CHECKPOINT_SAVE_SECONDS.labels(self.run).observe(save_seconds)
        if write_seconds:  # 0: a synchronous save, counted in save_seconds
            CHECKPOINT_WRITE_SECONDS.labels(self.run).observe(write_seconds)
        if size_bytes is not None:
            CHECKPOINT_BYTES.labels(self.run).set(size_bytes)


def chunk_scored(job: str, rows: int, seconds: float) -> None:
    INFERENCE_ROWS.labels(job).inc(rows)
    if seconds > 0:
        INFERENCE_ROWS_PER_SECOND.labels(job).set(rows / seconds)


def scale_progressed(run: str, scale: str, workers: int, progress: dict[str, Any]) -> None:
    """A scale's latest figures: its progress file's (any of them may be missing yet)."""
    rate, epoch = progress.get("images_per_second"), progress.get("epoch")
    if isinstance(rate, int | float) and rate > 0:
        SCALE_IMAGES_PER_SECOND.labels(run, scale, str(workers)).set(rate)
    if isinstance(epoch, int):
        SCALE_EPOCHS.labels(run, scale).set(epoch)


def add_metrics_port_argument(parser: argparse.ArgumentParser) -> None:
    """`--metrics-port` (env TEMPOTRAIN_METRICS_PORT), shared by the worker and the operator."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("TEMPOTRAIN_METRICS_PORT", "0")) or None,
        help="serve Prometheus metrics at GET /metrics on this port (env "
        "TEMPOTRAIN_METRICS_PORT; default: none)",
    )
