"""Checkpoints written off the training loop, in the manner of CheckFreq and PyTorch's
`torch.distributed.checkpoint.async_save`.

At a save the loop is held only while the model's and the optimizer's state are copied to host
memory (pinned buffers on CUDA, reused from save to save) and the few small files (RNG,
scheduler, trainer state: Hugging Face's own writers) are written. A background thread then
writes the weights and the optimizer state, fsyncs every file and writes the marker last
(`checkpoints.write_marker`), so resume semantics do not change: a save the process did not
finish has no marker and is never resumed from. At most one save is in flight: the next waits
for it, and so does the end of the run (the save a SIGTERM asks for included).

Imported only by the trainer process (it imports torch and transformers at the top).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import rotate_checkpoints

OPTIMIZER_FILE = "optimizer.pt"  # the names Trainer._load_optimizer_and_scheduler reads
SCHEDULER_FILE = "scheduler.pt"
TRAINING_ARGS_FILE = "training_args.bin"


class HostCopier:
    """Copies a state tree (nested dicts/lists of tensors and plain values) to host memory.

    Buffers are kept from one save to the next, keyed by their place in the tree: a copy
    allocates (and pins, on CUDA) once per run, not once per save. Reusing them is safe
    because a buffer is only written again after the save that read it has finished (one in
    flight). Tensors that share storage (tied weights) share one copy, as they did on the
    device, so `save_pretrained` sees them tied.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def copy(self, tree: Any, name: str) -> Any:
        seen: dict[tuple[int, torch.dtype, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
        copied = self._copy(tree, name, seen)
        if any(buffer.is_pinned() for buffer in seen.values()):
            torch.cuda.synchronize()  # the non-blocking device → host copies have landed
        return copied

    def _copy(self, node: Any, path: str, seen: dict[Any, torch.Tensor]) -> Any:
        if isinstance(node, torch.Tensor):
            key = (node.data_ptr(), node.dtype, tuple(node.shape), tuple(node.stride()))
            if key not in seen:
                seen[key] = self._into_buffer(node.detach(), path)
            return seen[key]
        if isinstance(node, dict):
            return {k: self._copy(v, f"{path}/{k}", seen) for k, v in node.items()}
        if isinstance(node, list | tuple):
            items = [self._copy(v, f"{path}/{i}", seen) for i, v in enumerate(node)]
            return items if isinstance(node, list) else tuple(items)
        return copy.deepcopy(node)

    def _into_buffer(self, tensor: torch.Tensor, path: str) -> torch.Tensor:
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            pin = tensor.is_cuda
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            self._buffers[path] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        return buffer


class BackgroundWriter:
    """One writer thread, at most one write in flight. A write that failed raises at the next
    `wait` (the next save, or the end of the run), which fails the trainer: the run resumes
    from the newest checkpoint that did verify."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._in_flight: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._in_flight = self._pool.submit(write)

    def wait(self) -> float:
        """Seconds spent waiting for the write in flight (0 if none)."""
        if self._in_flight is None:
            return 0.0
        started = time.monotonic()
        in_flight, self._in_flight = self._in_flight, None
        in_flight.result()
        return time.monotonic() - started


@dataclass
class CheckpointWrite:
    """A save as the training loop hands it over: where, at which step, and what it cost."""

    directory: Path
    step: int
    epoch: float
    loss: float | None  # the last training loss logged before the save
    stall_seconds: float = 0.0  # the loop held: the copy to host, any wait for the last write
    write_seconds: float = 0.0  # in the background, overlapped with training
    in_background: bool = False  # False: the loop waits for the marker too
    model_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)


CheckpointWritten = Callable[[CheckpointWrite], None]


class AsyncCheckpointTrainer(Trainer):
    """The Hugging Face Trainer with its checkpoint saves in the background.

    `written` is called once every file of a checkpoint is written (on the writer thread when
    asynchronous) and writes its marker. With several processes (torchrun) saves stay
    synchronous: each rank writes its own RNG file and the marker must follow all of them,
    which one rank's background thread cannot know without a collective of its own.
    `TEMPOTRAIN_SYNC_CHECKPOINTS=1` makes them synchronous too (the bench's comparison).
    """

    def __init__(self, *args: Any, written: CheckpointWritten, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written = written
        synchronous = os.environ.get("TEMPOTRAIN_SYNC_CHECKPOINTS", "") not in ("", "0")
        self.asynchronous = self.args.world_size == 1 and not synchronous
        self.writer = BackgroundWriter()
        self.copier = HostCopier()
        self._pending: CheckpointWrite | None = None
        self._rotation_limit: int | None = None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        started = time.monotonic()
        run_dir = Path(self._get_output_dir(trial=trial))
        logged_losses = (e["loss"] for e in reversed(self.state.log_history) if "loss" in e)
        save = CheckpointWrite(
            run_dir / f"checkpoint-{self.state.global_step}",
            self.state.global_step,
            self.state.epoch or 0.0,
            next(logged_losses, None),
        )
        if not self.asynchronous:
            super()._save_checkpoint(model, trial)
            save.stall_seconds = time.monotonic() - started
            self.written(save)
            return
        self.writer.wait()  # one save in flight: its buffers are about to be reused
        self._pending = save
        # Rotation deletes old checkpoints: only once the new one has its marker (`_write`),
        # or a kill mid-write could leave none to resume from.
        self._rotation_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            # Hugging Face's own sequence (trainer state, RNG, scheduler, best-model
            # bookkeeping); the two big writes come to the overrides below, which copy.
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = self._rotation_limit
            self._pending = None
        save.stall_seconds = time.monotonic() - started
        save.in_background = True
        self.writer.submit(lambda: self._write(save))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self._pending is None or output_dir is None:
            super().save_model(output_dir, _internal_call)
            return
        assert self.model is not None
        self._pending.model_state = self.copier.copy(self.model.state_dict(), "model")
        # The small files now, on the loop's thread: the collator uses the tokenizer as it
        # trains, and the arguments are saved as the user set them (rotation limit included).
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        arguments = copy.copy(self.args)
        arguments.save_total_limit = self._rotation_limit
        torch.save(arguments, Path(output_dir) / TRAINING_ARGS_FILE)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._pending is None:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        assert self.optimizer is not None and self.lr_scheduler is not None
        self._pending.optimizer_state = self.copier.copy(self.optimizer.state_dict(), "optim")
        torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_FILE)

    def _write(self, save: CheckpointWrite) -> None:
        started = time.monotonic()
        # The weights as `save_model` writes them, config beside, from the host copy.
        model = self.model
        assert isinstance(model, PreTrainedModel)  # what `load_model` gives
        model.save_pretrained(save.directory, state_dict=save.model_state)
        if save.optimizer_state is not None:  # None: `save_only_model`
            torch.save(save.optimizer_state, save.directory / OPTIMIZER_FILE)
        save.model_state = save.optimizer_state = None
        save.write_seconds = time.monotonic() - started
        self.written(save)  # the marker: fsyncs every file, then itself
        rotate_checkpoints(
            output_dir=str(save.directory.parent),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def finish_saves(self) -> None:
        """Wait for the save in flight (at the end of the run, and after a stop); its error,
        if it failed, is raised here."""
        self.writer.wait()
