"""The Hugging Face Trainer run as a process of its own.

`python -m tempotrain_workers.trainer_main JOB_FILE`

The `fine_tune_bert` activity supervises this process: it reads one JSON event per line
from stdout (progress, checkpoint, error), heartbeats to Temporal, and sends SIGTERM on
cancellation, upon which the trainer finishes its step, saves a checkpoint and exits with
EXIT_STOPPED. A separate process keeps a CUDA crash or OOM from taking the worker down,
and lets torchrun start one rank per GPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tempotrain_workers import history
from tempotrain_workers.api import (
    BertFineTuneConfig,
    BertFineTuneResult,
    DatasetSchema,
    ErrorType,
)
from tempotrain_workers.checkpoints import marker_bytes, write_marker
from tempotrain_workers.files import write_json_atomically
from tempotrain_workers.model_names import model_not_found

if TYPE_CHECKING:  # imported by `run` only: it imports torch and transformers
    from tempotrain_workers.async_checkpoints import CheckpointWrite

EVENT_PREFIX = "@tempotrain "
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request after saving; not a failure
PROGRESS_FILE = "progress.json"  # the step reached, rewritten at the logging cadence
EXIT_BAD_INPUT = 64  # EX_USAGE: an error event with a non-retryable type was emitted
PROGRESS_EVERY_SECONDS = 2.0


class TrainerJob(BaseModel):
    config: BertFineTuneConfig
    run_dir: str
    snapshot_dir: str
    snapshot_hash: str
    schema_: DatasetSchema
    resume_from: str | None = None
    resumed_from_step: int | None = None


def reached_step(run_dir: Path) -> int | None:
    """The step the run's trainer last reported (its progress.json, written by
    `report_progress`); None before any."""
    try:
        return int(json.loads((run_dir / PROGRESS_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def global_rank_zero() -> bool:
    """The process of global rank 0 (torchrun sets RANK; one process: always): the one that
    emits events and writes the run's shared files."""
    return int(os.environ.get("RANK", "0")) == 0


_stdout = threading.Lock()  # the checkpoint writer's thread emits too: one line at a time


def emit(event: str, **fields: Any) -> None:
    if not global_rank_zero():
        return
    line = EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str) + "\n"
    with _stdout:
        sys.stdout.write(line)
        sys.stdout.flush()


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def ranks_agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (torchrun): a SIGTERM may reach one rank only, and
    clocks differ, so every rank stops, or saves, at the same step: one complete checkpoint,
    never a rank waiting in a collective the others left. One rank: the flags as they are."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    votes = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return tuple(bool(vote) for vote in votes.tolist())


def build_callback(job: TrainerJob) -> Any:
    from transformers import TrainerCallback

    run_dir = Path(job.run_dir)
    interval = (job.config.save_interval_minutes or 0) * 60
    run_state_file = run_dir / "tempotrain-run.json"

    class CheckpointCallback(TrainerCallback):
        """Markers after saves, time-based saves, graceful stop on SIGTERM, progress events."""

        def __init__(self) -> None:
            self.stop_requested = False
            self.last_save = time.monotonic()
            self.last_progress = 0.0
            self.last_loss: float | None = None
            self.losses: list[float] = []
            self.parent = os.getppid()
            state = json.loads(run_state_file.read_text()) if run_state_file.exists() else {}
            self.checkpoints_saved = int(state.get("checkpoints_saved", 0))
            self.latest: dict[str, Any] | None = None
            self.total_steps = 0
            self.checkpoint_seconds = 0.0
            self.checkpoint_write_seconds = 0.0
            self.history = run_dir / history.HISTORY_FILE
            self.ended = False
            self.board: Any = None
            if global_rank_zero():
                # What the lost attempt logged past the checkpoint this one resumes from is
                # trained again: drop it, so no step is in the history twice.
                history.trim(self.history, job.resumed_from_step)
                self.board = tensorboard_writer(
                    run_dir / history.TENSORBOARD_DIR, (job.resumed_from_step or 0) + 1
                )

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
                self.losses.append(self.last_loss)
            if logs and state.is_world_process_zero and global_rank_zero():
                numbers = {k: v for k, v in logs.items() if isinstance(v, int | float)}
                step = state.global_step
                if "eval_loss" in numbers and job.config.eval_steps and not self.ended:
                    # During training (eval_steps): for the sweep's median rule.
                    emit(
                        "evaluation",
                        step=step,
                        eval_loss=numbers.get("eval_loss"),
                        eval_accuracy=numbers.get("eval_accuracy"),
                    )
                record = {"step": step, "epoch": state.epoch, "time": time.time(), **numbers}
                history.append(self.history, record)
                if self.board is not None:
                    for key, value in numbers.items():
                        if key in BOARD_KEYS or key.startswith("eval_"):
                            self.board.add_scalar(board_tag(key), value, step)
                    self.board.flush()

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.total_steps = state.max_steps

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # The supervising worker died: stop, don't orphan.
            stop = self.stop_requested or os.getppid() != self.parent
            timed = bool(interval) and time.monotonic() - self.last_save >= interval
            stop, timed = ranks_agree(stop, timed)
            if stop:
                self.stop_requested = True
                control.should_save = True
                control.should_training_stop = True
            elif timed:
                control.should_save = True
            due = time.monotonic() - self.last_progress >= PROGRESS_EVERY_SECONDS
            if state.is_world_process_zero and due:
                self.report_progress(state)

        def report_progress(self, state: Any) -> None:
            """progress.json on the runs volume, and the progress event. At the logging
            cadence, on every save and at the end, not every step: on a network filesystem
            a rewrite per step costs several round trips each."""
            self.last_progress = time.monotonic()
            progress = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": state.epoch,
                "loss": self.last_loss,
            }
            write_json_atomically(run_dir / PROGRESS_FILE, progress)
            emit("progress", **progress)

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # The evaluation after training is the coordinator's to judge, not the rule's.
            self.ended = True
            if state.is_world_process_zero:
                self.report_progress(state)

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.last_save = time.monotonic()
            if state.is_world_process_zero:
                self.report_progress(state)  # a reader sees the step this checkpoint holds

        def written(self, save: CheckpointWrite) -> None:
            """Every file of a checkpoint is written: its marker, by the global rank 0 only
            (as `emit` decides; two ranks writing it race on its staging file). On the
            checkpoint writer's thread when saves are asynchronous."""
            if not global_rank_zero():
                return
            marking = time.monotonic()
            info = write_marker(
                save.directory,
                step=save.step,
                epoch=save.epoch,
                loss=save.loss,
                snapshot_hash=job.snapshot_hash,
            )
            if save.in_background:
                save.write_seconds += time.monotonic() - marking
            else:  # the loop waited for the marker too
                save.stall_seconds += time.monotonic() - marking
            self.checkpoints_saved += 1
            write_json_atomically(run_state_file, {"checkpoints_saved": self.checkpoints_saved})
            self.latest = json.loads(info.model_dump_json())
            self.checkpoint_seconds += save.stall_seconds
            self.checkpoint_write_seconds += save.write_seconds
            emit(
                "checkpoint",
                checkpoint=self.latest,
                total_steps=self.total_steps,
                save_seconds=save.stall_seconds,
                write_seconds=save.write_seconds,
                checkpoint_bytes=marker_bytes(save.directory),
            )

    return CheckpointCallback()


def tensorboard_writer(log_dir: Path, purge_step: int) -> Any:
    """TensorBoard events beside the JSONL; `purge_step`: TensorBoard drops what earlier
    attempts logged from that step on (they are trained again). None without tensorboardX."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir=str(log_dir), purge_step=purge_step)


# The curves TensorBoard gets (the JSONL keeps every number the Trainer logs).
BOARD_KEYS = frozenset({"loss", "learning_rate", "grad_norm"})


def board_tag(key: str) -> str:
    """`eval_loss` → `eval/loss`, `loss` → `train/loss`: TensorBoard's usual grouping."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return f"train/{key}"


def tokenized(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Any:
    from datasets import Dataset

    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [r["label"] for r in rows]})


def accuracy(eval_prediction: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def load_model(
    config: BertFineTuneConfig, schema: DatasetSchema, snapshots_root: Path
) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = schema.label_names or [str(i) for i in range(schema.num_labels)]
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model_name)
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model_name,
            num_labels=schema.num_labels,
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
    except OSError as err:
        emit(
            "error",
            type=str(ErrorType.MODEL_NOT_FOUND),
            message=model_not_found(config.model_name, snapshots_root, err),
        )
        sys.exit(EXIT_BAD_INPUT)
    return tokenizer, model


def run(job: TrainerJob) -> int:
    from transformers import TrainingArguments, set_seed

    from tempotrain_workers.async_checkpoints import AsyncCheckpointTrainer
    from tempotrain_workers.snapshots import read_split

    config = job.config
    set_seed(config.seed)
    callback = build_callback(job)
    signal.signal(signal.SIGTERM, lambda *_: setattr(callback, "stop_requested", True))

    tokenizer, model = load_model(config, job.schema_, Path(job.snapshot_dir).parent)
    snapshot_dir = Path(job.snapshot_dir)
    train = tokenized(read_split(snapshot_dir, "train"), tokenizer, config.max_seq_length)
    evaluation = tokenized(read_split(snapshot_dir, "eval"), tokenizer, config.max_seq_length)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    args = TrainingArguments(
        output_dir=job.run_dir,
        num_train_epochs=config.num_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 32),
        learning_rate=config.learning_rate,
        # Steps, not a ratio: `warmup_ratio` is gone from Transformers 5, an int works in both.
        warmup_steps=math.ceil(config.warmup_ratio * steps_per_epoch * config.num_epochs),
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        # Time-based saves come from the callback; without save_steps, never by count.
        save_steps=config.save_steps or 10**9,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=max(1, min(10, config.save_steps or 10, steps_per_epoch)),
        # A sweep with early stopping evaluates as it trains; otherwise once, at the end.
        eval_strategy="steps" if config.eval_steps else "no",
        eval_steps=config.eval_steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = AsyncCheckpointTrainer(
        written=callback.written,
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    started = time.monotonic()
    try:
        output = trainer.train(resume_from_checkpoint=job.resume_from)
    except BaseException:
        trainer.finish_saves()  # a save in flight is a good checkpoint: let it land
        raise
    train_seconds = time.monotonic() - started
    if callback.stop_requested:
        trainer.finish_saves()  # the save the stop asked for, marker and event included
        emit("stopped", step=trainer.state.global_step)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under torchrun a rank that exits non-zero gets the others SIGTERMed, maybe mid
            # save: exit 0 and let the "stopped" event say it (the supervisor reads it).
            return 0
        return EXIT_STOPPED

    # The final weights and the evaluation overlap the last checkpoint's write.
    trainer.save_model(job.run_dir)  # final weights + tokenizer at the run root
    metrics = trainer.evaluate() if len(evaluation) else {}
    trainer.finish_saves()
    if callback.board is not None:
        callback.board.close()
    if trainer.is_world_process_zero():
        result = BertFineTuneResult(
            run_id=config.run_id or "",
            model_path=job.run_dir,
            snapshot_id=Path(job.snapshot_dir).name,
            snapshot_hash=job.snapshot_hash,
            schema=job.schema_,
            global_step=trainer.state.global_step,
            total_steps=trainer.state.max_steps,
            train_loss=output.training_loss,
            losses=callback.losses,
            eval_loss=metrics.get("eval_loss"),
            eval_accuracy=metrics.get("eval_accuracy"),
            checkpoints_saved=callback.checkpoints_saved,
            latest_checkpoint=callback.latest,
            resumed_from_step=job.resumed_from_step,
            device=pick_device(),
            train_seconds=train_seconds,
            checkpoint_seconds=callback.checkpoint_seconds,
            checkpoint_write_seconds=callback.checkpoint_write_seconds,
        )
        write_json_atomically(
            Path(job.run_dir) / "result.json", json.loads(result.model_dump_json(by_alias=True))
        )
        emit("finished", step=trainer.state.global_step)
    return 0


def main(argv: list[str]) -> int:
    job = TrainerJob.model_validate_json(Path(argv[1]).read_text())
    return run(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
