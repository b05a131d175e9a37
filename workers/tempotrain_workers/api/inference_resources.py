"""The BatchInference custom resource: spec and status."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from tempotrain_workers.api.base import (
    CEL,
    DNS_LABEL_PATTERN,
    RELATIVE_PATH_PATTERN,
    WireModel,
    cel,
    model_name_field,
)
from tempotrain_workers.api.inference import CHUNK_TARGET_SECONDS, Pooling
from tempotrain_workers.api.resources import (
    SUSPEND_DESCRIPTION,
    ExperimentStatus,
    Quantity,
    StorageSpec,
    Toleration,
    WorkersSpec,
    hub_dataset_field,
    immutable,
)


class InferenceModelSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "has(self.fromExperiment) != has(self.name)",
                    "set exactly one of model.fromExperiment and model.name",
                )
            ]
        }
    )
    from_experiment: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=40,
        description="a BertExperiment in this namespace: its trained model (once Succeeded)",
    )
    name: str | None = model_name_field(default=None)


class InferenceDatasetSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "has(self.name) != has(self.file)",
                    "set exactly one of dataset.name and dataset.file",
                )
            ]
        }
    )
    name: str | None = hub_dataset_field()
    config: str | None = Field(default=None, max_length=128)
    file: str | None = Field(
        default=None,
        max_length=512,
        pattern=RELATIVE_PATH_PATTERN,
        description="a .jsonl/.json/.csv/.parquet file, relative to the snapshots volume",
    )
    split: str = Field(default="train", min_length=1, max_length=64)
    text_field: str = Field(default="text", min_length=1, max_length=128)


class RangeSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "!has(self.end) || self.end > self.start",
                    "range.end must be greater than range.start",
                )
            ]
        }
    )
    start: int = Field(default=0, ge=0)
    end: int | None = Field(default=None, ge=1, description="exclusive; default: every row")


class ActivationsOutputSpec(WireModel):
    layer: int = Field(default=-1, ge=-64, le=64, description="hidden_states index; -1: last")
    pooling: Pooling = Pooling.CLS


class OutputsSpec(WireModel):
    path: str | None = Field(
        default=None,
        max_length=512,
        pattern=RELATIVE_PATH_PATTERN,
        description="folder on the runs volume; default inference/<name>. Another "
        "BatchInference over the same path reuses every finished chunk",
    )
    activations: ActivationsOutputSpec | None = Field(
        default=None, description="also write pooled hidden states (predictions always)"
    )


class InferenceResourcesSpec(WireModel):
    cpu: Quantity = "2"
    memory: Quantity = "8Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


class BatchInferenceSpec(WireModel):
    model: InferenceModelSpec = Field(json_schema_extra=immutable("model"))
    dataset: InferenceDatasetSpec = Field(json_schema_extra=immutable("dataset"))
    range: RangeSpec = Field(default_factory=RangeSpec, json_schema_extra=immutable("range"))
    chunk_size: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="rows per chunk; unset: sized from a short measured probe for about "
        f"{CHUNK_TARGET_SECONDS:g} s of compute each, and recorded with the output so a re-run "
        "keeps the same chunks",
        json_schema_extra=immutable("chunkSize"),
    )
    workers: int = Field(default=1, ge=1, le=256, description="parallel inference workers")
    gpus_per_worker: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu per pod")
    resources: InferenceResourcesSpec = Field(default_factory=InferenceResourcesSpec)
    outputs: OutputsSpec = Field(
        default_factory=OutputsSpec, json_schema_extra=immutable("outputs")
    )
    retain_chunks: bool = Field(default=False, json_schema_extra=immutable("retainChunks"))
    batch_size: int = Field(default=64, ge=1, le=4096, json_schema_extra=immutable("batchSize"))
    max_seq_length: int = Field(
        default=128, ge=8, le=512, json_schema_extra=immutable("maxSeqLength")
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec,
        description="with model.fromExperiment, unset claims default to the experiment's",
        json_schema_extra=immutable("storage"),
    )
    image: WorkersSpec = Field(default_factory=WorkersSpec)
    retry_generation: int = Field(
        default=0,
        ge=0,
        description="raise it to run a Failed job again without delete and re-apply: "
        "finished chunks are kept",
    )
    suspend: bool = Field(default=False, description=SUSPEND_DESCRIPTION)

    def output_path(self, name: str) -> str:
        return self.outputs.path or f"inference/{name}"


class ChunksStatus(WireModel):
    size: int | None = Field(default=None, description="rows per chunk (given or measured)")
    total: int = 0
    completed: int = 0
    skipped: int = 0
    failed: int = 0


class InferenceOutputStatus(WireModel):
    path: str
    rows: int
    sha256: str


class BatchInferenceStatus(ExperimentStatus):
    chunks: ChunksStatus | None = None
    chunks_done: str | None = Field(default=None, description="done/total, for kubectl get")
    rows_per_second: float | None = None
    output: InferenceOutputStatus | None = None
