"""The function every Ray Train worker runs: real DDP (gradients all-reduced every step),
a verified checkpoint per epoch, and resume from the newest checkpoint that verifies.

Runs inside Ray worker processes: it imports torch and ray, and reads its whole job from the
config dict, so it behaves the same on a local Ray and on a KubeRay cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.collective
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tempotrain_workers import checkpoints
from tempotrain_workers.api import ScaleTrainRequest
from tempotrain_workers.cifar import data, models
from tempotrain_workers.cifar.layout import ScaleLayout
from tempotrain_workers.files import write_json_atomically

STATE_FILE = "training-state.json"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
MAX_GRAD_NORM = 5.0


@dataclass
class TrainingState:
    epochs_done: int = 0
    loop_seconds: float = 0.0  # time inside the training loops, summed over every attempt
    images_seen: int = 0
    train_loss: float | None = None
    test_accuracy: float | None = None


def training_identity(request: ScaleTrainRequest) -> str:
    """What a checkpoint must have been trained with to be resumed (the marker's snapshot
    hash): a re-applied experiment with other data or hyper-parameters starts afresh instead
    of continuing someone else's optimisation. Epochs are left out: more epochs continue."""
    scale = request.scale
    data = (
        f"synthetic-{request.synthetic_size}" if request.dataset.value == "synthetic" else "cifar10"
    )
    return (
        f"{data}-{request.model.value}-seed{request.seed}-lr{request.learning_rate}"
        f"-bs{scale.batch_size}-w{scale.workers}-gpu{int(request.use_gpu)}"
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    request = ScaleTrainRequest.model_validate(config["request"])
    layout = ScaleLayout(Path(config["storage_path"]), request.scale_name)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _record_start(layout, rank)
    torch.manual_seed(request.seed)  # identical initial weights on every rank
    # Denormal floats (tiny late-training gradients) are ~100x slower on CPUs and would make
    # images/s depend on how far the loss has fallen.
    torch.set_flush_denormal(True)
    device = ray.train.torch.get_device()
    train_set, test_set = data.load(request, Path(config["datasets_dir"]))

    model = models.build(request.model)
    num_parameters = sum(p.numel() for p in model.parameters())
    state, restored = _restore(request, layout, model, rank)
    _log_attempt(layout, rank, state)
    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=request.learning_rate * world,  # linear scaling: the global batch grows with world
        momentum=0.9,
        weight_decay=5e-4,
    )
    if restored is not None:
        optimizer.load_state_dict(torch.load(restored / OPTIMIZER_FILE, map_location=device))

    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=request.seed
    )
    loader = DataLoader(
        train_set,
        batch_size=request.scale.batch_size,
        sampler=sampler,
        # Decoding and augmenting real images on the worker's other CPUs keeps a GPU fed;
        # synthetic tensors need no loader processes.
        num_workers=_loader_processes(request),
        pin_memory=device.type == "cuda",
    )
    identity = training_identity(request)
    for epoch in range(state.epochs_done, request.scale.epochs):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        started = time.perf_counter()
        state.train_loss = _train_epoch(model, loader, optimizer, device)
        state.loop_seconds += time.perf_counter() - started
        state.images_seen += len(sampler) * world
        state.epochs_done = epoch + 1
        state.test_accuracy = _accuracy(model, test_set, rank, world, device)
        metrics = _metrics(state, num_parameters)
        with tempfile.TemporaryDirectory() as staging:
            checkpoint = None
            if rank == 0:
                _save(Path(staging), model, optimizer, state, identity)
                checkpoint = ray.train.Checkpoint.from_directory(staging)
                write_json_atomically(layout.progress_file, metrics)
            ray.train.report(metrics, checkpoint=checkpoint)

    # Final figures, also when a restart found every epoch already done. A file, not a
    # report: Ray Train's result carries the metrics of the last *checkpoint* only.
    final = _metrics(state, num_parameters)
    final["test_accuracy"] = _accuracy(model, test_set, rank, world, device)
    final["parameter_digests"] = _gather(parameter_digest(model), world)
    if request.sync_probe_steps and world > 1:
        model.train()  # as in training (BatchNorm batch statistics)
        final["gradient_sync_share"] = _sync_share(model, loader, device, request.sync_probe_steps)
    final["device"] = str(device)
    if rank == 0:
        write_json_atomically(layout.final_metrics_file, final)


def _record_start(layout: ScaleLayout, rank: int) -> None:
    path = layout.pid_file(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


def _log_attempt(layout: ScaleLayout, rank: int, state: TrainingState) -> None:
    if rank != 0:
        return
    line = {"pid": os.getpid(), "start_epoch": state.epochs_done, "time": time.time()}
    with layout.attempts_file.open("a") as f:
        f.write(json.dumps(line) + "\n")


def _restore(
    request: ScaleTrainRequest, layout: ScaleLayout, model: nn.Module, rank: int
) -> tuple[TrainingState, Path | None]:
    """Load the newest checkpoint whose marker verifies: Ray's latest first, else any older
    one in the run (a torn copy falls back instead of failing the scale). Rank 0 chooses and
    tells the others, so every rank resumes the same epoch even where a shared volume's
    directory listings differ between nodes."""
    choice = _newest_verified(request, layout) if rank == 0 else None
    chosen = ray.train.collective.broadcast_from_rank_zero(str(choice) if choice else None)
    if chosen is None:
        return TrainingState(), None
    path = Path(chosen)
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu"))
    state = TrainingState(**json.loads((path / STATE_FILE).read_text()))
    return state, path


def _newest_verified(request: ScaleTrainRequest, layout: ScaleLayout) -> Path | None:
    identity = training_identity(request)
    candidates: list[Path] = []
    latest = ray.train.get_checkpoint()
    if latest is not None:
        candidates.append(Path(latest.path))
    candidates += layout.ray_checkpoints()
    verified = [
        (info.step, path)
        for path in candidates
        if (info := checkpoints.verify(path, identity)) is not None
    ]
    return max(verified)[1] if verified else None


def _loader_processes(request: ScaleTrainRequest) -> int:
    if request.dataset.value == "synthetic":
        return 0
    return max(0, request.scale.cpus_per_worker - 1)


def _save(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    identity: str,
) -> None:
    torch.save(_unwrap(model).state_dict(), directory / MODEL_FILE)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
    checkpoints.write_marker(  # last: the checkpoint counts only once this verifies
        directory,
        step=state.epochs_done,
        epoch=float(state.epochs_done),
        loss=state.train_loss,
        snapshot_hash=identity,
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    model.train()
    total, batches = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        # DDP all-reduces the gradients during backward, bucket by bucket.
        loss.backward()  # type: ignore[no-untyped-call]
        # After the all-reduce, so every rank clips the same gradients: linearly scaled
        # learning rates stay stable early on without a warm-up schedule.
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    test_set: Dataset[tuple[torch.Tensor, int]],
    rank: int,
    world: int,
    device: torch.device,
) -> float:
    """Each rank scores its shard; the counts are summed across ranks."""
    model.eval()
    sampler: DistributedSampler[Any] = DistributedSampler(
        test_set, num_replicas=world, rank=rank, shuffle=False
    )
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in DataLoader(test_set, batch_size=512, sampler=sampler):
        predictions = model(images.to(device)).argmax(dim=1)
        counts[0] += (predictions == labels.to(device)).sum()
        counts[1] += labels.numel()
    if _distributed(world):
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def parameter_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in _unwrap(model).named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _gather(value: str, world: int) -> list[str]:
    if not _distributed(world):
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return [str(v) for v in gathered]


def _sync_share(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    steps: int,
) -> float:
    """Share of a forward+backward step spent synchronising gradients: the same batches timed
    with DDP's all-reduce and under `no_sync()`. Gradients are discarded; weights unchanged."""
    assert isinstance(model, DistributedDataParallel)
    batches = [b for _, b in zip(range(steps), _cycle(loader), strict=False)]

    def timed(synchronise: bool) -> float:
        started = time.perf_counter()
        for images, labels in batches:
            context = contextlib.nullcontext() if synchronise else model.no_sync()
            with context:
                loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
                loss.backward()  # type: ignore[no-untyped-call]
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    timed(True)  # warm-up: allocator, buckets
    with_sync, without_sync = timed(True), timed(False)
    return max(0.0, 1.0 - without_sync / with_sync)


def _cycle(
    loader: DataLoader[Any],
) -> Iterator[Any]:
    while True:
        yield from loader


def _metrics(state: TrainingState, num_parameters: int) -> dict[str, Any]:
    return {
        "epoch": state.epochs_done,
        "train_loss": state.train_loss,
        "test_accuracy": state.test_accuracy,
        "loop_seconds": state.loop_seconds,
        "images_seen": state.images_seen,
        "images_per_second": state.images_seen / state.loop_seconds if state.loop_seconds else 0.0,
        "num_parameters": num_parameters,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _distributed(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()
