"""`plan_inference`, `process_chunk` and `merge_chunks`: idempotent by construction.

A chunk's output is `<output>/chunks/<chunk name>.parquet`, written to a temporary file and
renamed, then its marker `<chunk name>.json` (range, rows, sha256, job fingerprint) is written
last. A chunk whose marker verifies is skipped; one whose file is missing or fails its checksum
is recomputed. The merged `<output>/output.parquet` gets the same kind of marker, so a job whose
whole output is already there finishes without touching a chunk. Models and datasets are loaded
once per worker process, not once per chunk.

A chunk's work is in three parts, so that the device never waits on the rest: its rows are
read and tokenized (`_tokenize`), the model scores them on the device's own thread
(`DevicePool.run`), then its output is written. A worker takes one chunk more than it has
devices (api.worker_concurrency): while one chunk is scored the next one is prepared, and the
one before writes its output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tempotrain_workers.api import (
    MERGED_NAME,
    ActivationsSpec,
    ChunkOutcome,
    ChunkRequest,
    ChunkSizing,
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
from tempotrain_workers.inference.sizing import chunk_size_for
from tempotrain_workers.model_names import model_not_found, resolve_model

if TYPE_CHECKING:
    # Where a worker finds the job's relative paths.
    from tempotrain_workers.activities import StorageRoots as Volumes

# Chunks of one worker may run in threads side by side: one of them loads a model or a split
# (and imports the ML stack, whose lazy modules are not safe to import from two threads).
_LOADING = threading.Lock()
log = logging.getLogger(__name__)
T = TypeVar("T")
SIZING_FILE = "chunking.json"  # beside the chunks: how big they are, and why
# The probe's rows are scored again by their chunk, so it is kept short: a few rows untimed
# (the first forward's one-off costs), then one batch timed. Its error only moves a chunk
# between ~1 and ~4 s of compute.
PROBE_WARM_UP_ROWS = 8


class DevicePool:
    """One chunk's scoring per device at a time: a pod with N GPUs scores N chunks side by
    side, each on a device of its own with its own copy of the model. Without CUDA the CPU is
    the one device: torch already spreads one forward over every core, and two at once only
    slow each other. Each device's model work runs on a thread of its own, so one OpenMP team
    serves it, whichever activity thread the chunk came in on."""

    def __init__(self, devices: list[str] | None = None) -> None:
        self._devices = devices
        self._free: list[str] = list(devices or ["cpu"])
        self._changed = threading.Condition()
        self._threads: dict[str, ThreadPoolExecutor] = {}

    def _discover(self) -> None:
        if self._devices is None:
            import torch

            self._devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            self._free = list(self._devices or ["cpu"])

    @contextlib.contextmanager
    def device(self) -> Iterator[str]:
        """A free device, held for the block (waits for one)."""
        with self._changed:
            self._discover()
            self._changed.wait_for(lambda: bool(self._free))
            device = self._free.pop(0)
        try:
            yield device
        finally:
            with self._changed:
                self._free.append(device)
                self._changed.notify()

    def run(self, work: Callable[[str], T]) -> T:
        """`work(device)` on a free device, on that device's own thread."""
        with self.device() as device:
            with self._changed:
                thread = self._threads.get(device)
                if thread is None:
                    thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{device}")
                    self._threads[device] = thread
            return thread.submit(work, device).result()


DEVICES = DevicePool()  # the process's devices: chunks and probes (and a bench's loop) take turns


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
    """The job's row range (every row when none is given), its chunk size (`_chunk_size`),
    and its merged output, if that is already there for exactly this job and range."""
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
    recorded = recorded_sizing(job, volumes, whole)
    if existing is not None:  # nothing to score: no probe; the size only counts the chunks
        size = request.chunk_size or (recorded.chunk_size if recorded else whole.end - whole.start)
        return InferencePlan(range=whole, existing=existing, chunk_size=size)
    chunk_size = _chunk_size(request, volumes, texts, whole, recorded)
    return InferencePlan(range=whole, existing=None, chunk_size=chunk_size)


def sizing_file(job: InferenceJob, volumes: Volumes) -> Path:
    return output_dir(job, volumes) / SIZING_FILE


def recorded_sizing(job: InferenceJob, volumes: Volumes, whole: RowRange) -> ChunkSizing | None:
    """The chunk size recorded with this job's output, if it is this job's and range's."""
    try:
        sizing = ChunkSizing.model_validate_json(sizing_file(job, volumes).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return sizing if sizing.fingerprint == job.fingerprint() and sizing.range == whole else None


def _chunk_size(
    request: PlanRequest,
    volumes: Volumes,
    texts: list[str],
    whole: RowRange,
    recorded: ChunkSizing | None,
) -> int:
    """The spec's chunk size; else the one recorded with the output (a re-run cuts the same
    chunks, so every finished one is reused); else one measured now, and recorded."""
    job = request.job
    if request.chunk_size is not None:
        if recorded is None or recorded.chunk_size != request.chunk_size:
            given = ChunkSizing(
                fingerprint=job.fingerprint(),
                range=whole,
                chunk_size=request.chunk_size,
                measured=False,
            )
            _record(job, volumes, given)
        return request.chunk_size
    if recorded is not None:
        return recorded.chunk_size
    rows_per_second, device = _probe(job, volumes, texts, whole)
    size = chunk_size_for(
        rows_per_second,
        batch_size=job.batch_size,
        total_rows=whole.end - whole.start,
        in_flight=request.in_flight,
    )
    log.info(
        "%s: chunks of %d rows (the probe scored %.1f rows/s on %s)",
        job.job_id,
        size,
        rows_per_second,
        device,
    )
    measured = ChunkSizing(
        fingerprint=job.fingerprint(),
        range=whole,
        chunk_size=size,
        measured=True,
        rows_per_second=round(rows_per_second, 2),
        device=device,
    )
    _record(job, volumes, measured)
    return size


def _record(job: InferenceJob, volumes: Volumes, sizing: ChunkSizing) -> None:
    path = sizing_file(job, volumes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, sizing.model_dump(mode="json"))


def _probe(
    job: InferenceJob, volumes: Volumes, texts: list[str], whole: RowRange
) -> tuple[float, str]:
    """(rows per second, device) of the job's own model over its first rows, on the device a
    chunk would get, tokenized first and then scored, as a chunk does."""
    size = job.batch_size
    first = whole.start
    warm = texts[first : min(whole.end, first + PROBE_WARM_UP_ROWS)]
    timed = texts[first : min(whole.end, first + size)]
    with _LOADING:
        tokenizer = _tokenizer_of(job, volumes)

    def measure(device: str) -> tuple[float, str]:
        with _LOADING:
            model = _model_of(job, volumes, device)
        _score(job, _tokenize(job, warm, tokenizer), model)
        started = time.perf_counter()
        _score(job, _tokenize(job, timed, tokenizer), model)
        return len(timed) / max(time.perf_counter() - started, 1e-6), device

    return DEVICES.run(measure)


def process_chunk(request: ChunkRequest, volumes: Volumes) -> ChunkOutcome:
    job, rows = request.job, request.range
    done = verified(job, volumes, rows)
    if done is not None:
        return done
    path, marker = chunk_file(job, volumes, rows), marker_file(job, volumes, rows)
    recomputed = marker.exists() or path.exists()
    started = time.perf_counter()
    # Prepared while another chunk may hold the device: rows and tokens, never the model.
    with _LOADING:
        texts = _texts(*_dataset_key(job, volumes))
        tokenizer = _tokenizer_of(job, volumes)
    if rows.end > len(texts):
        raise non_retryable(
            ErrorType.INVALID_INPUT, f"{rows.name}: the split has only {len(texts)} rows"
        )
    batches = _tokenize(job, texts[rows.start : rows.end], tokenizer)
    queued = time.perf_counter()
    waited = 0.0  # for the device, while another chunk held it: not this chunk's time

    def score(device: str) -> _Scores:
        nonlocal waited
        waited = time.perf_counter() - queued
        with _LOADING:
            model = _model_of(job, volumes, device)
        return _score(job, batches, model)

    table = _table(job, rows, DEVICES.run(score))
    # Written once the device is free for the next chunk.
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
        seconds=round(time.perf_counter() - started - waited, 3),
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


def _model_path(job: InferenceJob, volumes: Volumes) -> str:
    """Where the job's model is: a run's trained model, a model folder on the snapshots
    volume, or a Hub id."""
    if job.model_run is not None:
        from tempotrain_workers.evaluation import trained_model_dir

        return str(trained_model_dir(volumes.runs / job.model_run))
    return resolve_model(str(job.model_name), volumes.snapshots)


def _model_of(job: InferenceJob, volumes: Volumes, device: str) -> Any:
    """The job's model on `device`."""
    return _from_model_folder(
        job, volumes, lambda name: _model(name, job.activations is not None, device)
    )


def _tokenizer_of(job: InferenceJob, volumes: Volumes) -> Any:
    return _from_model_folder(job, volumes, _tokenizer)


def _from_model_folder(job: InferenceJob, volumes: Volumes, load: Callable[[str], T]) -> T:
    """`load` of the job's model path; what was looked for where when it does not load."""
    name = _model_path(job, volumes)
    try:
        return load(name)
    except OSError as err:  # not a folder, not on the Hub (or offline without it cached)
        message = model_not_found(str(job.model_name or name), volumes.snapshots, err)
        raise non_retryable(ErrorType.MODEL_NOT_FOUND, message) from err


@lru_cache(maxsize=16)
def _model(model_path: str, hidden_states: bool, device: str) -> Any:
    """The model on `device`, loaded once per worker process and device."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, output_hidden_states=hidden_states
    )
    return model.to(device).eval()


@lru_cache(maxsize=16)
def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _tokenize(job: InferenceJob, texts: list[str], tokenizer: Any) -> list[Any]:
    """The rows as the model's batches, on the CPU (moved to the device when scored)."""
    return [
        tokenizer(
            texts[start : start + job.batch_size],
            truncation=True,
            max_length=job.max_seq_length,
            padding=True,
            return_tensors="pt",
        )
        for start in range(0, len(texts), job.batch_size)
    ]


@dataclass
class _Scores:
    predictions: list[int]
    confidences: list[float]
    logits: list[list[float]]
    activations: list[list[float]]
    id2label: dict[int, str]


def _score(job: InferenceJob, batches: list[Any], model: Any) -> _Scores:
    import torch

    scores = _Scores([], [], [], [], dict(model.config.id2label or {}))
    with torch.inference_mode():
        for tokens in batches:
            batch = tokens.to(model.device)
            output = model(**batch)
            logits = output.logits.float()
            confidence, label = logits.softmax(dim=-1).max(dim=-1)
            scores.predictions += label.cpu().tolist()
            scores.confidences += confidence.cpu().tolist()
            scores.logits += logits.cpu().tolist()
            if job.activations is not None:
                pooled = _pool(output.hidden_states, batch["attention_mask"], job.activations)
                scores.activations += pooled.float().cpu().tolist()
    return scores


def _table(job: InferenceJob, rows: RowRange, scores: _Scores) -> Any:
    import pyarrow as pa

    labels = scores.id2label
    columns: dict[str, Any] = {
        "row": pa.array(range(rows.start, rows.end), pa.int64()),
        "prediction": pa.array(scores.predictions, pa.int64()),
        "label": pa.array([str(labels.get(p, p)) for p in scores.predictions], pa.string()),
        "confidence": pa.array(scores.confidences, pa.float32()),
        "logits": pa.array(scores.logits, pa.list_(pa.float32())),
    }
    if job.activations is not None:
        columns["activation"] = pa.array(scores.activations, pa.list_(pa.float32()))
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
