"""Content-addressed dataset snapshots: JSONL per split + metadata, written once, reused by hash.

A snapshot keeps only the text and label columns, so its hash changes exactly when the
training data does. Checkpoints record the hash, and a checkpoint is never resumed against
other data.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempotrain_workers.api import (
    DatasetSchema,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    ErrorType,
)
from tempotrain_workers.errors import non_retryable

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_FIELD_PREFERENCE = ("sentence", "text", "content", "review", "document", "sentence1")
LABEL_FIELD_PREFERENCE = ("label", "labels", "target", "class")
METADATA_FILE = "metadata.json"
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}


@dataclass(frozen=True)
class LoadedSplits:
    train: Any  # datasets.Dataset
    eval: Any
    source: str


def create_snapshot(request: DatasetSnapshotRequest, snapshots_root: Path) -> DatasetSnapshotResult:
    splits = _load(request, base=snapshots_root)
    schema = infer_schema(splits.train, request.text_field, request.label_field)
    train_rows = _rows(splits.train, schema)
    eval_rows = _rows(splits.eval, schema)
    if not train_rows:
        raise non_retryable(ErrorType.DATASET_SCHEMA, f"{splits.source}: the train split is empty")
    digest = content_hash(schema, train_rows, eval_rows)
    snapshot_id = f"{_slug(request.dataset_name)}-{digest[:16]}"
    target = snapshots_root / snapshot_id
    result = DatasetSnapshotResult(
        snapshot_id=snapshot_id,
        snapshot_hash=digest,
        path=str(target),
        schema=schema,
        num_train_examples=len(train_rows),
        num_eval_examples=len(eval_rows),
        reused=False,
    )
    if _holds(target, digest):
        return result.model_copy(update={"reused": True})
    _write_atomically(target, result, train_rows, eval_rows, splits.source)
    return result


def read_metadata(snapshot_dir: Path) -> DatasetSnapshotResult | None:
    try:
        raw = json.loads((snapshot_dir / METADATA_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    raw.pop("source", None)
    return DatasetSnapshotResult.model_validate(raw)


def read_split(snapshot_dir: Path, split: str) -> list[dict[str, Any]]:
    with (snapshot_dir / SPLIT_FILES[split]).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def content_hash(
    schema: DatasetSchema, train_rows: Iterable[dict[str, Any]], eval_rows: Iterable[dict[str, Any]]
) -> str:
    digest = hashlib.sha256()
    digest.update(schema.model_dump_json().encode())
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        digest.update(f"\n#split:{name}\n".encode())
        for row in rows:
            digest.update(_canonical(row))
    return digest.hexdigest()


def infer_schema(dataset: Any, text_field: str | None, label_field: str | None) -> DatasetSchema:
    columns: dict[str, Any] = dict(dataset.features)
    text = text_field or _first_present(TEXT_FIELD_PREFERENCE, columns) or _first_string(columns)
    label = label_field or _first_present(LABEL_FIELD_PREFERENCE, columns)
    available = ", ".join(columns)
    if text is None or text not in columns:
        raise non_retryable(
            ErrorType.DATASET_SCHEMA,
            f"text field {text!r} not found; columns are: {available} (set text_field)",
        )
    if label is None or label not in columns:
        raise non_retryable(
            ErrorType.DATASET_SCHEMA,
            f"label field {label!r} not found; columns are: {available} (set label_field)",
        )
    feature = columns[label]
    names = list(getattr(feature, "names", None) or []) or None
    if names:
        num_labels = len(names)
    else:
        values = set(dataset[label])
        if not all(isinstance(v, int) and v >= 0 for v in values):
            raise non_retryable(
                ErrorType.DATASET_SCHEMA,
                f"label field {label!r} must hold class ids 0..n-1, "
                f"found e.g. {sorted(values, key=str)[:5]}",
            )
        num_labels = max(2, max(values) + 1)
    return DatasetSchema(
        text_field=text, label_field=label, num_labels=num_labels, label_names=names
    )


def _load(
    request: DatasetSnapshotRequest, hold_out: bool = True, base: Path | None = None
) -> LoadedSplits:
    try:
        import datasets
    except ImportError as err:  # the operator image has no ML dependencies
        raise non_retryable(
            ErrorType.DEPENDENCY_MISSING, f"datasets is not installed: {err}"
        ) from err

    local = local_path(request.dataset_name, base)
    if local is not None:
        loaded = datasets.load_dataset(local_format(local), data_files=str(local), split="train")
        source = str(local)
        all_splits = {"train": loaded}
    else:
        source = request.dataset_name + (
            f"/{request.dataset_config}" if request.dataset_config else ""
        )
        try:
            all_splits = datasets.load_dataset(request.dataset_name, request.dataset_config)
        except FileNotFoundError as err:
            raise non_retryable(ErrorType.DATASET_NOT_FOUND, f"dataset {source!r}: {err}") from err
        except datasets.exceptions.DatasetNotFoundError as err:
            raise non_retryable(ErrorType.DATASET_NOT_FOUND, f"dataset {source!r}: {err}") from err

    if request.train_split not in all_splits:
        raise non_retryable(
            ErrorType.DATASET_SCHEMA,
            f"{source}: no split {request.train_split!r}; splits are {list(all_splits)}",
        )
    train = all_splits[request.train_split]
    if not hold_out:
        evaluation = train.select([])
    elif request.eval_split in all_splits and request.eval_split != request.train_split:
        evaluation = all_splits[request.eval_split]
    else:
        # One file (or no eval split): hold out a seeded share of train, the same every time.
        held = train.train_test_split(test_size=request.eval_holdout_fraction, seed=request.seed)
        train, evaluation = held["train"], held["test"]
    return LoadedSplits(
        train=_subsample(train, request.max_train_samples, request.seed),
        eval=_subsample(evaluation, request.max_eval_samples, request.seed),
        source=source,
    )


def load_split_rows(
    dataset_name: str,
    dataset_config: str | None,
    split: str,
    text_field: str | None,
    label_field: str | None,
    max_samples: int | None,
    seed: int = 42,
) -> tuple[DatasetSchema, list[dict[str, Any]]]:
    """One split of any dataset as normalised rows, for evaluating on data other than a
    run's own snapshot."""
    request = DatasetSnapshotRequest(
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        train_split=split,
        eval_split=split,
        text_field=text_field,
        label_field=label_field,
        max_train_samples=max_samples,
        seed=seed,
    )
    loaded = _load(request, hold_out=False)
    schema = infer_schema(loaded.train, text_field, label_field)
    return schema, _rows(loaded.train, schema)


def load_split(name: str, config: str | None, split: str) -> Any:
    """One split, whole and in its own order (no hold-out, no sampling). A local file is a
    single split: `split` names Hub splits only."""
    local = local_path(name)
    request = DatasetSnapshotRequest(
        dataset_name=name,
        dataset_config=config,
        train_split="train" if local is not None else split,
        eval_split=split,
    )
    return _load(request, hold_out=False).train


def local_path(name: str, base: Path | None = None) -> Path | None:
    """A local data file, if the name is one; relative names are tried against base (the
    snapshots volume, where a BertExperiment's `dataset.file` lives) first."""
    path = Path(name).expanduser()
    if base is not None and not path.is_absolute() and (base / path).is_file():
        return base / path
    if path.suffix.lower() in LOCAL_FORMATS or name.startswith(("/", "./", "../", "~")):
        if not path.is_file():
            raise non_retryable(
                ErrorType.DATASET_NOT_FOUND, f"dataset file {name!r} does not exist"
            )
        return path
    return None


def local_format(path: Path) -> str:
    try:
        return LOCAL_FORMATS[path.suffix.lower()]
    except KeyError:
        raise non_retryable(
            ErrorType.DATASET_NOT_FOUND,
            f"{path}: unsupported file type; use one of {sorted(LOCAL_FORMATS)}",
        ) from None


def _subsample(dataset: Any, limit: int | None, seed: int) -> Any:
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def _rows(dataset: Any, schema: DatasetSchema) -> list[dict[str, Any]]:
    texts = dataset[schema.text_field]
    labels = dataset[schema.label_field]
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise non_retryable(
            ErrorType.DATASET_SCHEMA, f"text field {schema.text_field!r} holds non-text {bad!r}"
        )
    return [{"text": t, "label": int(label)} for t, label in zip(texts, labels, strict=True)]


def _write_atomically(
    target: Path,
    result: DatasetSnapshotResult,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    source: str,
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for split, rows in (("train", train_rows), ("eval", eval_rows)):
            with (staging / SPLIT_FILES[split]).open("wb") as f:
                for row in rows:
                    f.write(_canonical(row))
        metadata = json.loads(result.model_dump_json(by_alias=True)) | {"source": source}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if target.exists():  # a torn or foreign directory under our id: replace it
            shutil.rmtree(target)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        # Another worker renamed the same content into place first: theirs is as good.
        if not _holds(target, result.snapshot_hash):
            raise


def _holds(snapshot_dir: Path, digest: str) -> bool:
    metadata = read_metadata(snapshot_dir)
    return metadata is not None and metadata.snapshot_hash == digest


def _canonical(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _first_present(candidates: Iterable[str], columns: dict[str, Any]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _first_string(columns: dict[str, Any]) -> str | None:
    return next((n for n, f in columns.items() if getattr(f, "dtype", None) == "string"), None)


def _slug(name: str) -> str:
    stem = Path(name).stem if _looks_like_path(name) else name
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40] or "dataset"


def _looks_like_path(name: str) -> bool:
    return "/" in name and (
        Path(name).suffix.lower() in LOCAL_FORMATS or name.startswith(("/", "."))
    )
