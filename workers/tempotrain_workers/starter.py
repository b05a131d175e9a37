"""`python -m tempotrain_workers.starter`: start a CoordinatorWorkflow (train, then evaluate).

The workflow id is derived from the run id, so starting the same run twice attaches to the
existing execution instead of training twice. Defaults point at the Hugging Face Hub
(bert-base-uncased on GLUE SST-2); pass a local model folder and data file to stay offline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter

from tempotrain_workers.api import (
    DEFAULT_DATASET,
    DEFAULT_DATASET_CONFIG,
    DEFAULT_MODEL,
    EVAL_QUEUE,
    TRAINING_QUEUE,
    BertFineTuneConfig,
    CoordinatorWorkflowConfig,
    CoordinatorWorkflowInput,
)
from tempotrain_workers.workflows import CoordinatorWorkflow


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, CoordinatorWorkflowInput]:
    parser = argparse.ArgumentParser(
        prog="python -m tempotrain_workers.starter", description=__doc__
    )
    parser.add_argument("--address", default=os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    parser.add_argument("--namespace", default=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    parser.add_argument("--run-id", required=True, help="DNS-1123 label naming the run")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hub name or local folder")
    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, help="Hub name or a local .jsonl/.csv/.parquet file"
    )
    parser.add_argument(
        "--dataset-config",
        default=None,
        help=f"Hub dataset config (default {DEFAULT_DATASET_CONFIG} for glue)",
    )
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--save-interval-minutes", type=float, default=None)
    parser.add_argument("--training-queue", default=TRAINING_QUEUE)
    parser.add_argument("--eval-queue", default=EVAL_QUEUE)
    parser.add_argument("--no-wait", action="store_true", help="print the id and exit")
    args = parser.parse_args(argv)
    dataset_config = args.dataset_config
    if dataset_config is None and args.dataset == DEFAULT_DATASET:
        dataset_config = DEFAULT_DATASET_CONFIG
    config = BertFineTuneConfig(
        run_id=args.run_id,
        model_name=args.model,
        dataset_name=args.dataset,
        dataset_config=dataset_config,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        save_steps=args.save_steps,
        save_interval_minutes=args.save_interval_minutes,
    )
    request = CoordinatorWorkflowInput(
        configs=[CoordinatorWorkflowConfig(fine_tune=config)],
        training_queue=args.training_queue,
        eval_queue=args.eval_queue,
    )
    return args, request


async def start(argv: list[str] | None = None) -> int:
    args, request = parse(argv)
    client = await Client.connect(
        args.address, namespace=args.namespace, data_converter=pydantic_data_converter
    )
    handle = await client.start_workflow(
        CoordinatorWorkflow.run,
        request,
        id=f"bert-coordinator-{args.run_id}",
        task_queue=args.eval_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    print(f"workflow {handle.id} (run {handle.result_run_id})", flush=True)
    if args.no_wait:
        return 0
    result = await handle.result()
    print(result.model_dump_json(indent=2, by_alias=True))
    return 0


def main() -> int:
    try:
        return asyncio.run(start())
    except ValueError as err:  # pydantic's ValidationError: say which field, no traceback
        print(f"invalid request: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
