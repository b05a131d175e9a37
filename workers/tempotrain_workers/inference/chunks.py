"""`plan_inference`, `process_chunk` and `merge_chunks`: idempotent by construction.

A chunk's output is `<output>/chunks/<chunk name>.parquet`, written to a temporary file and
renamed, then its marker `<chunk name>.json` (range, rows, sha256, job fingerprint) is written
last. A chunk whose marker verifies is skipped; one whose file is missing or fails its checksum
is recomputed. The merged `<output>/output.parquet` gets the same kind of marker, so a job whose
whole output is already there finishes without touching a chunk. Models and datasets are loaded
once per worker process, not once per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tempotrain_workers.api import (
    MERGED_NAME,
    ActivationsSpec,
    ChunkOutcome,
    ChunkRequest,
    ErrorType,
    InferenceJob,
    InferencePlan,
    MergeRequest,
    MergeResult,
    PlanRequest,
    Pooling,
    RowRange,
    chunk_ranges,
)
from tempotrain_workers.checkpoints import file_digest
from tempotrain_workers.errors import non_retryable
from tempotrain_workers.files import staging_path, write_json_atomically
from tempotrain_workers.model_names import model_not_found, resolve_model

if TYPE_CHECKING:
    # Where a worker finds the job's relative paths.
    from tempotrain_workers.activities import StorageRoots as Volumes

# Chunks of one worker may run in threads side by side: one of them loads a model or a split
# (and imports the ML stack, whose lazy modules are not safe to import from two threads).
_LOADING = threading.Lock()


class DevicePool:
    """One chunk per GPU at a time: a pod with N GPUs runs N chunks side by side (its worker
    takes N activities at once), each on a device of its own with its own copy of the model.
    Without CUDA every chunk runs on the CPU."""

    def __init__(self, devices: list[str] | None = None) -> None:
        self._devices = devices
        self._free: list[str] = list(devices or [])
        self._changed = threading.Condition()

    def _discover(self) -> list[str]:
        if self._devices is None:
            import torch

            self._devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            self._free = list(self._devices)
        return self._devices

    @contextlib.contextmanager
    def device(self) -> Iterator[str]:
        with self._changed:
            if not self._discover():
                device = "cpu"
            else:
                self._changed.wait_for(lambda: bool(self._free))
                device = self._free.pop(0)
        try:
            yield device
        finally:
            if device != "cpu":
                with self._changed:
                    self._free.append(device)
                    self._changed.notify()


_DEVICES = DevicePool()


def output_dir(job: InferenceJob, volumes: Volumes) -> Path:
    return volumes.runs / job.output_dir  # an absolute output_dir stays as it is


def chunk_file(job: InferenceJob, volumes: Volumes, rows: RowRange) -> Path:
    return output_dir(job, volumes) / "chunks" / f"{rows.name}.parquet"


def marker_file(job: InferenceJob, volumes: Volumes, rows: RowRange) -> Path:
    return chunk_file(job, volumes, rows).with_suffix(".json")


def merged_file(job: InferenceJob, volumes: Volumes) -> Path:
    return output_dir(job, volumes) / f"{MERGED_NAME}.parquet"


def _job_marker(marker: Path, job: InferenceJob, rows: RowRange) -> dict[str, Any]:
    """The marker's content if it belongs to this job and range, else {}."""
    try:
        content = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if content.get("fingerprint") != job.fingerprint() or content.get("range") != rows.model_dump():
        return {}
    return dict(content)


def _verified_marker(path: Path, marker: Path, job: InferenceJob, rows: RowRange) -> dict[str, Any]:
    """The marker's content if it belongs to this job and range and the file matches it."""
    content = _job_marker(marker, job, rows)
    if not content or not path.is_file() or file_digest(path) != content.get("sha256"):
        return {}
    return content


def verified(job: InferenceJob, volumes: Volumes, rows: RowRange) -> ChunkOutcome | None:
    """The chunk's outcome if its marker and file agree (job, rows, sha256), else None."""
    path = chunk_file(job, volumes, rows)
    marker = _verified_marker(path, marker_file(job, volumes, rows), job, rows)
    if not marker:
        return None
    return ChunkOutcome(
        range=rows, rows=marker["rows"], sha256=marker["sha256"], path=str(path), skipped=True
    )


def plan_inference(request: PlanRequest, volumes: Volumes) -> InferencePlan:
    """The job's row range (every row when none is given) and its merged output, if that is
    already there for exactly this job and range."""
    job, wanted = request.job, request.range
    with _LOADING:
        texts = _texts(*_dataset_key(job, volumes))
    end = len(texts) if wanted.end is None else wanted.end
    if end > len(texts) or wanted.start >= end:
        raise non_retryable(
            ErrorType.INVALID_INPUT,
            f"range [{wanted.start}, {wanted.end if wanted.end is not None else 'end'}) is "
            f"beyond {job.dataset_name} (split {job.split!r}), which has {len(texts)} rows",
        )
    whole = RowRange(start=wanted.start, end=end)
    path = merged_file(job, volumes)
    marker = _verified_marker(path, path.with_suffix(".json"), job, whole)
    existing = (
        MergeResult(path=str(path), rows=marker["rows"], sha256=marker["sha256"])
        if marker
        else None
    )
    return InferencePlan(range=whole, existing=existing)


def process_chunk(request: ChunkRequest, volumes: Volumes) -> ChunkOutcome:
    job, rows = request.job, request.range
    done = verified(job, volumes, rows)
    if done is not None:
        return done
    path, marker = chunk_file(job, volumes, rows), marker_file(job, volumes, rows)
    recomputed = marker.exists() or path.exists()
    started = time.perf_counter()
    with _DEVICES.device() as device:
        with _LOADING:
            texts = _texts(*_dataset_key(job, volumes))
            tokenizer, model = _model_of(job, volumes, device)
        if rows.end > len(texts):
            raise non_retryable(
                ErrorType.INVALID_INPUT, f"{rows.name}: the split has only {len(texts)} rows"
            )
        table = _predict_table(job, rows, texts[rows.start : rows.end], tokenizer, model)
    digest = _write_parquet_atomically(table, path)
    write_json_atomically(  # last: the chunk counts once this exists and agrees
        marker,
        {
            "range": rows.model_dump(),
            "rows": table.num_rows,
            "sha256": digest,
            "fingerprint": job.fingerprint(),
        },
    )
    return ChunkOutcome(
        range=rows,
        rows=table.num_rows,
        sha256=digest,
        path=str(path),
        skipped=False,
        recomputed=recomputed,
        seconds=round(time.perf_counter() - started, 3),
    )


def merge_chunks(request: MergeRequest, volumes: Volumes) -> MergeResult:
    """Verify every chunk, concatenate them in row order, write atomically, record sha256.

    Streams: each chunk is read once (its bytes checked against the marker, then parsed from
    memory) and appended to the output, so memory holds one chunk, not the whole job."""
    job, whole = request.job, request.range
    ordered = chunk_ranges(whole, request.chunk_size)
    path = merged_file(job, volumes)
    marker = _verified_marker(path, path.with_suffix(".json"), job, whole)
    if marker:  # a retried merge whose first attempt finished writing
        return MergeResult(path=str(path), rows=marker["rows"], sha256=marker["sha256"])
    staging = staging_path(path)
    try:
        rows = _concatenate_verified(job, volumes, ordered, staging)
        # Hashed before the rename: the digest is of the bytes this attempt wrote.
        result = MergeResult(path=str(path), rows=rows, sha256=file_digest(staging))
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    write_json_atomically(
        path.with_suffix(".json"),
        {
            "range": whole.model_dump(),
            "rows": result.rows,
            "sha256": result.sha256,
            "fingerprint": job.fingerprint(),
        },
    )
    if not request.retain_chunks:
        for chunk in ordered:
            chunk_file(job, volumes, chunk).unlink(missing_ok=True)
            marker_file(job, volumes, chunk).unlink(missing_ok=True)
    return result


def _concatenate_verified(
    job: InferenceJob, volumes: Volumes, ordered: list[RowRange], destination: Path
) -> int:
    """Append every chunk, in order, to one Parquet file; its row count. Raises (retryable)
    naming the chunks that do not verify: the workflow only merges chunks it saw verified, so
    a file that went bad since is recomputed when the job is run again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing: list[str] = []
    writer: Any = None
    rows = 0
    try:
        for chunk in ordered:
            data = _verified_bytes(job, volumes, chunk)
            if data is None:
                missing.append(chunk.name)
                continue
            if missing:
                continue  # nothing more to write: only finding every bad chunk is left
            table = pq.read_table(pa.BufferReader(data))
            if writer is None:
                destination.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(destination, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if missing:
        raise ValueError(f"cannot merge: {len(missing)} chunk(s) do not verify: {missing[:5]}")
    return rows


def _verified_bytes(job: InferenceJob, volumes: Volumes, rows: RowRange) -> bytes | None:
    """The chunk file's bytes if its marker belongs to this job and range and they match it."""
    content = _job_marker(marker_file(job, volumes, rows), job, rows)
    if not content:
        return None
    try:
        data = chunk_file(job, volumes, rows).read_bytes()
    except FileNotFoundError:
        return None
    return data if hashlib.sha256(data).hexdigest() == content.get("sha256") else None


def _write_parquet_atomically(table: Any, path: Path) -> str:
    """Write `table` to `path` through a staging file of this call's own; the sha256 of the
    bytes written, hashed from memory (never read back: another writer may rename over it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    try:
        staging.write_bytes(data)
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _dataset_key(job: InferenceJob, volumes: Volumes) -> tuple[str, str | None, str, str]:
    """A hashable key for the split's texts: a local file resolved against the snapshots
    volume, else the Hub id."""
    from tempotrain_workers.snapshots import local_path

    local = local_path(job.dataset_name, base=volumes.snapshots)
    name = str(local) if local is not None else job.dataset_name
    return name, job.dataset_config, job.split, job.text_field


@lru_cache(maxsize=4)
def _texts(name: str, config: str | None, split: str, field: str) -> list[str]:
    """The split's texts, loaded once per process (every chunk of a job reads the same)."""
    from tempotrain_workers.snapshots import load_split

    dataset = load_split(name, config, split)
    if field not in dataset.column_names:
        raise non_retryable(
            ErrorType.DATASET_SCHEMA,
            f"{name}: no text column {field!r} (columns: {', '.join(dataset.column_names)})",
        )
    return [str(text) for text in dataset[field]]


def _model_of(job: InferenceJob, volumes: Volumes, device: str) -> tuple[Any, Any]:
    """The job's model: a run's trained model, a model folder on the snapshots volume, or a
    Hub id; what was looked for where when none of them loads."""
    if job.model_run is not None:
        from tempotrain_workers.evaluation import trained_model_dir

        name = str(trained_model_dir(volumes.runs / job.model_run))
    else:
        name = resolve_model(str(job.model_name), volumes.snapshots)
    try:
        return _model(name, job.activations is not None, device)
    except OSError as err:  # not a folder, not on the Hub (or offline without it cached)
        message = model_not_found(str(job.model_name or name), volumes.snapshots, err)
        raise non_retryable(ErrorType.MODEL_NOT_FOUND, message) from err


@lru_cache(maxsize=16)
def _model(model_path: str, hidden_states: bool, device: str) -> tuple[Any, Any]:
    """(tokenizer, model on `device`), loaded once per worker process and device."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, output_hidden_states=hidden_states
    )
    return tokenizer, model.to(device).eval()


def _predict_table(
    job: InferenceJob, rows: RowRange, texts: list[str], tokenizer: Any, model: Any
) -> Any:
    import pyarrow as pa
    import torch

    id2label = model.config.id2label or {}
    predictions: list[int] = []
    confidences: list[float] = []
    logits_out: list[list[float]] = []
    activations: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(texts), job.batch_size):
            batch = tokenizer(
                texts[start : start + job.batch_size],
                truncation=True,
                max_length=job.max_seq_length,
                padding=True,
                return_tensors="pt",
            ).to(model.device)
            output = model(**batch)
            logits = output.logits.float()
            confidence, label = logits.softmax(dim=-1).max(dim=-1)
            predictions += label.cpu().tolist()
            confidences += confidence.cpu().tolist()
            logits_out += logits.cpu().tolist()
            if job.activations is not None:
                pooled = _pool(output.hidden_states, batch["attention_mask"], job.activations)
                activations += pooled.float().cpu().tolist()
    columns: dict[str, Any] = {
        "row": pa.array(range(rows.start, rows.end), pa.int64()),
        "prediction": pa.array(predictions, pa.int64()),
        "label": pa.array([str(id2label.get(p, p)) for p in predictions], pa.string()),
        "confidence": pa.array(confidences, pa.float32()),
        "logits": pa.array(logits_out, pa.list_(pa.float32())),
    }
    if job.activations is not None:
        columns["activation"] = pa.array(activations, pa.list_(pa.float32()))
    return pa.table(columns)


def _pool(hidden_states: Any, attention_mask: Any, spec: ActivationsSpec) -> Any:
    if not -len(hidden_states) <= spec.layer < len(hidden_states):
        raise non_retryable(
            ErrorType.INVALID_INPUT,
            f"activations.layer {spec.layer}: the model has hidden states "
            f"0..{len(hidden_states) - 1}",
        )
    layer = hidden_states[spec.layer]
    if spec.pooling == Pooling.CLS:
        return layer[:, 0]
    mask = attention_mask.unsqueeze(-1).to(layer.dtype)
    return (layer * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
