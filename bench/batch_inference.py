"""What chunked, durable inference costs: BatchInferenceWorkflow vs a plain loop over one model.

Prints, for each way of running the job, rows/s through the workflow / rows/s of a plain
PyTorch loop over the same rows and the same model (goal >= 0.95 at default settings) and
the per-chunk overhead in ms: (workflow wall - plain loop wall) / chunks. The ways:

- default: no chunk size (the plan measures one: ~2 s of compute a chunk) and the chunks in
  flight the operator gives one worker (api.worker_concurrency: one scored, the next
  prepared meanwhile) — what a user gets without tuning anything;
- tuned: `--chunk-size` rows a chunk, the same prefetch;
- given, no prefetch: `--chunk-size` with one chunk in flight (the worker before prefetch).

    .venv/bin/python bench/batch_inference.py [--rows 4096] [--chunk-size 512] \
        [--batch-size 64] [--max-seq-length 128] [--repeats 3]

Both sides run in this process, their torch calls on one and the same thread (the worker's
device thread: one OpenMP team): the workflow's activities run on an in-process Worker
against a dev server of the bench's own (file-backed, as `tempotrain-dev` runs it). The
model is MiniLM with a seeded 2-label head, saved once, so both sides load identical weights.

A chunk has a fixed cost of ~35 ms (one workflow task to schedule the next chunk, activity
pickup, the marker and checksum), so with one chunk in flight the ratio says how big a chunk
is next to it. Measured on 2 CPU cores before sizing and prefetch: chunk 50 -> 0.60 (the old
default), 192 -> 0.83, 512 -> 0.96, 1000 -> 0.96.

Timed, workflow: start_workflow to its result (plan, every chunk: tokenize, forward, Parquet,
sha256, marker; the merge; every Temporal round trip). Timed, plain loop: tokenize, forward,
softmax/argmax over every batch, one Parquet write at the end. Not timed, either side: the
dev server and Worker start-up, loading the model and reading the dataset (a warm-up job
loads the worker's process-wide model and dataset caches first; the plain loop loads its
model and texts before its clock starts), so the ratio compares steady-state throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from _harness import minilm_path, temporal_server
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from tempotrain_workers.activities import InferenceActivities, StorageRoots
from tempotrain_workers.api import (
    BatchInferenceInput,
    BatchInferenceResult,
    InferenceJob,
    RowSelection,
    worker_concurrency,
)
from tempotrain_workers.inference.chunks import DEVICES
from tempotrain_workers.sample_data import write_sentiment_jsonl
from tempotrain_workers.workflows import ALL_WORKFLOWS, BatchInferenceWorkflow

# Logit margins below this are float noise: the plain loop's batches pad differently from the
# chunks' (batches never straddle a chunk boundary), which moves logits by ~1e-6.
TIE_MARGIN = 1e-4


@dataclass(frozen=True)
class Settings:
    rows: int
    chunk_size: int  # the tuned way's
    batch_size: int
    max_seq_length: int
    repeats: int


@dataclass(frozen=True)
class Way:
    """One way of running the job through the workflow."""

    name: str
    chunk_size: int | None  # None: measured by the plan
    in_flight: int


@dataclass(frozen=True)
class WorkflowRun:
    wall: float
    result: BatchInferenceResult


def save_classifier(target: Path) -> Path:
    """MiniLM with a seeded 2-label head: the packaged model has no classifier, so each load
    would draw a new random head; saved once, both sides load the same weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = minilm_path()
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def read_texts(data: Path) -> list[str]:
    from datasets import load_dataset

    return [
        str(text) for text in load_dataset("json", data_files=str(data), split="train")["sentence"]
    ]


class PlainLoop:
    """The code a user would write without TempoTrain: load once, loop over batches, write one
    Parquet file."""

    def __init__(self, model_dir: Path, settings: Settings) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        )

    def run(self, texts: list[str], out: Path) -> float:
        """Predict every text and write `out`; returns the wall time (model already loaded)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch

        size = self.settings.batch_size
        id2label = self.model.config.id2label or {}
        predictions: list[int] = []
        confidences: list[float] = []
        logits_out: list[list[float]] = []
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                batch = self.tokenizer(
                    texts[start : start + size],
                    truncation=True,
                    max_length=self.settings.max_seq_length,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.float()
                confidence, label = logits.softmax(dim=-1).max(dim=-1)
                predictions += label.cpu().tolist()
                confidences += confidence.cpu().tolist()
                logits_out += logits.cpu().tolist()
        table = pa.table(
            {
                "row": pa.array(range(len(texts)), pa.int64()),
                "prediction": pa.array(predictions, pa.int64()),
                "label": pa.array([str(id2label.get(p, p)) for p in predictions], pa.string()),
                "confidence": pa.array(confidences, pa.float32()),
                "logits": pa.array(logits_out, pa.list_(pa.float32())),
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return time.perf_counter() - started


def request_for(
    settings: Settings, way: Way, model_dir: Path, data: Path, output_dir: str, queue: str
) -> BatchInferenceInput:
    return BatchInferenceInput(
        job=InferenceJob(
            job_id=output_dir,
            model_name=str(model_dir),
            dataset_name=str(data),
            text_field="sentence",
            output_dir=output_dir,  # relative: under the worker's runs volume
            batch_size=settings.batch_size,
            max_seq_length=settings.max_seq_length,
        ),
        range=RowSelection(start=0, end=settings.rows),
        chunk_size=way.chunk_size,
        workers=way.in_flight,
        retain_chunks=False,
        inference_queue=queue,
    )


async def through_workflow(client: Client, request: BatchInferenceInput) -> WorkflowRun:
    started = time.perf_counter()
    handle = await client.start_workflow(
        BatchInferenceWorkflow.run,
        request,
        id=f"bench-binf-{uuid.uuid4().hex[:8]}",
        task_queue=request.inference_queue,
        execution_timeout=timedelta(minutes=30),
    )
    result = await handle.result()
    return WorkflowRun(wall=time.perf_counter() - started, result=result)


def compare(plain: Path, durable: Path) -> tuple[int, int, float]:
    """(mismatched predictions that are not float-noise ties, ties that flipped, max |Δlogit|)."""
    import pyarrow.parquet as pq

    ours = pq.read_table(plain).to_pydict()
    theirs = pq.read_table(durable).to_pydict()
    if ours["row"] != theirs["row"]:
        raise SystemExit("FAIL: the outputs cover different rows")
    real, ties, worst = 0, 0, 0.0
    for mine, other, logits, other_logits in zip(
        ours["prediction"],
        theirs["prediction"],
        ours["logits"],
        theirs["logits"],
        strict=True,
    ):
        worst = max(worst, *(abs(a - b) for a, b in zip(logits, other_logits, strict=True)))
        if mine != other:
            if abs(logits[0] - logits[1]) < TIE_MARGIN:
                ties += 1
            else:
                real += 1
    return real, ties, worst


async def bench(root: Path, address: str, settings: Settings) -> int:
    import torch

    model_dir = await asyncio.to_thread(save_classifier, root / "snapshots" / "minilm-classifier")
    data = write_sentiment_jsonl(root / "snapshots" / "rows.jsonl", settings.rows)
    texts = read_texts(data)
    plain = await asyncio.to_thread(PlainLoop, model_dir, settings)
    prefetching = worker_concurrency(torch.cuda.device_count())
    given = settings.chunk_size
    ways = [
        Way("default (measured chunk size, prefetch)", None, prefetching),
        Way(f"tuned ({given}-row chunks, prefetch)", given, prefetching),
        Way(f"{given}-row chunks, no prefetch", given, 1),
    ]

    def plain_run(out: Path) -> float:  # on the device's thread, as the chunks are scored
        def on_device(_device: str) -> float:
            return plain.run(texts, out)

        wall: float = DEVICES.run(on_device)
        return wall

    client = await Client.connect(address, data_converter=pydantic_data_converter)
    queue = f"bench-binf-{uuid.uuid4().hex[:8]}"
    roots = StorageRoots(root / "snapshots", root / "runs")
    plain_walls: list[float] = []
    runs: dict[str, list[WorkflowRun]] = {way.name: [] for way in ways}
    async with Worker(
        client,
        task_queue=queue,
        workflows=ALL_WORKFLOWS,
        activities=InferenceActivities(roots).all(),
        max_concurrent_activities=prefetching,
    ):
        # Warm-up, untimed: loads the worker's cached model and texts, the workflow sandbox's
        # imports and torch's first-forward costs; then the plain loop's own first forward.
        await through_workflow(
            client, request_for(settings, ways[1], model_dir, data, "warm-up", queue)
        )
        await asyncio.to_thread(plain_run, root / "plain-warm-up.parquet")
        # Interleaved, so drift (thermal, page cache, other load) hits every way alike.
        for repeat in range(settings.repeats):
            plain_walls.append(await asyncio.to_thread(plain_run, root / f"plain-{repeat}.parquet"))
            for number, way in enumerate(ways):
                output = f"workflow-{number}-{repeat}"  # its own: a re-run would skip it all
                request = request_for(settings, way, model_dir, data, output, queue)
                runs[way.name].append(await through_workflow(client, request))

    best_plain = min(plain_walls)
    plain_rate = settings.rows / best_plain
    print(
        f"rows: {settings.rows}, batch: {settings.batch_size}, "
        f"max_seq_length: {settings.max_seq_length}, torch threads: {torch.get_num_threads()}, "
        f"device: {plain.device}, best of {settings.repeats}"
    )
    print(
        f"plain loop:  {best_plain:7.2f} s  {plain_rate:8.1f} rows/s  "
        f"(all: {', '.join(f'{w:.2f}' for w in plain_walls)} s)"
    )
    status = 0
    for way in ways:
        done = runs[way.name]
        if any(run.result.tally.computed_rows != settings.rows for run in done):
            print(f"FAIL: {way.name}: the workflow did not compute every row")
            return 1
        best = min(done, key=lambda r: r.wall)
        chunks, size = best.result.chunks_total, best.result.chunk_size
        ratio = settings.rows / best.wall / plain_rate
        print(
            f"{way.name}: {best.wall:7.2f} s  {settings.rows / best.wall:8.1f} rows/s  "
            f"(all: {', '.join(f'{r.wall:.2f}' for r in done)} s); {chunks} chunks x {size} "
            f"rows, {way.in_flight} in flight"
        )
        print(
            f"  throughput ratio workflow/plain: {ratio:.2f}; per-chunk overhead: "
            f"{(best.wall - best_plain) / chunks * 1000:.1f} ms (plan and merge included)"
        )
        status |= check_outputs(root, plain_walls, best_plain, best, settings.rows)
    return status


def check_outputs(
    root: Path, plain_walls: list[float], best_plain: float, best: WorkflowRun, rows: int
) -> int:
    real, ties, worst = compare(
        root / f"plain-{plain_walls.index(best_plain)}.parquet", Path(best.result.output.path)
    )
    if real:
        print(f"  outputs DISAGREE: {real} of {rows} predictions differ (max |Δlogit| {worst:.1e})")
        return 1
    flipped = f"; {ties} near-tie(s) flipped by float noise" if ties else ""
    print(f"  outputs agree: {rows} predictions row by row (max |Δlogit| {worst:.1e}{flipped})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    # Best of 3, interleaved: a shared 2-core machine's load swings more than the overhead.
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; the best counts")
    args = parser.parse_args()
    # Set before the ML stack is imported (lazily, below), which reads them once: no network;
    # quiet load reports (the new head's weights are "missing" on purpose) and progress bars.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    settings = Settings(
        rows=args.rows,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        repeats=args.repeats,
    )
    with (
        tempfile.TemporaryDirectory(prefix="batch-inference-") as tmp,
        temporal_server() as address,
    ):
        status = asyncio.run(bench(Path(tmp), address, settings))
    sys.exit(status)


if __name__ == "__main__":
    main()
