"""Temporal workflows: deterministic orchestration only; all I/O happens in activities."""

from tempotrain_workers.workflows.batch_inference import BatchInferenceWorkflow
from tempotrain_workers.workflows.coordinator import CoordinatorWorkflow
from tempotrain_workers.workflows.evaluation import BertEvalWorkflow, BertInferenceWorkflow
from tempotrain_workers.workflows.scaling import Cifar10ScalingWorkflow
from tempotrain_workers.workflows.training import CheckpointedBertTrainingWorkflow

ALL_WORKFLOWS = [
    CheckpointedBertTrainingWorkflow,
    BertEvalWorkflow,
    BertInferenceWorkflow,
    CoordinatorWorkflow,
    Cifar10ScalingWorkflow,
    BatchInferenceWorkflow,
]

__all__ = [
    "ALL_WORKFLOWS",
    "BatchInferenceWorkflow",
    "BertEvalWorkflow",
    "BertInferenceWorkflow",
    "CheckpointedBertTrainingWorkflow",
    "Cifar10ScalingWorkflow",
    "CoordinatorWorkflow",
]
