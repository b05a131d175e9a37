"""Batched evaluation and inference of a finished run, loaded from `<runs root>/<run_id>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tempotrain_workers.api import (
    BertEvalRequest,
    BertEvalResult,
    BertInferenceRequest,
    BertInferenceResult,
    ErrorType,
    Prediction,
)
from tempotrain_workers.errors import non_retryable
from tempotrain_workers.snapshots import load_split_rows, read_split


def trained_model_dir(run_dir: Path) -> Path:
    """`run_dir`, if it holds a finished run's final model; RunNotFound if not."""
    if not (run_dir / "config.json").is_file():
        raise non_retryable(
            ErrorType.RUN_NOT_FOUND, f"no trained model in {run_dir} (has the run finished?)"
        )
    return run_dir


def load_run(run_dir: Path) -> tuple[Any, Any, Any]:
    """(tokenizer, model, device) of a finished run; RunNotFound if it has no final model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trained_model_dir(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir).to(device).eval()
    return tokenizer, model, device


def predict(
    texts: list[str], tokenizer: Any, model: Any, device: Any, batch_size: int, max_length: int
) -> Any:
    """Logits for texts, batch by batch (float32, on CPU)."""
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            outputs.append(model(**batch.to(device)).logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, model.config.num_labels)


def evaluate(request: BertEvalRequest, runs_root: Path, snapshots_root: Path) -> BertEvalResult:
    import torch

    run_id = str(request.run_id)
    tokenizer, model, device = load_run(runs_root / run_id)
    if request.dataset_name is None:
        if request.snapshot_id is None:
            raise non_retryable(
                ErrorType.INVALID_INPUT, "evaluation needs dataset_name or snapshot_id"
            )
        rows = read_split(snapshots_root / request.snapshot_id, "eval")
        rows = rows[: request.max_eval_samples] if request.max_eval_samples else rows
        dataset = f"snapshot:{request.snapshot_id}"
    else:
        _, rows = load_split_rows(
            request.dataset_name,
            request.dataset_config,
            request.split,
            request.text_field,
            request.label_field,
            request.max_eval_samples,
        )
        dataset = request.dataset_name
    if not rows:
        raise non_retryable(ErrorType.DATASET_SCHEMA, f"{dataset}: no examples to evaluate")
    logits = predict(
        [r["text"] for r in rows],
        tokenizer,
        model,
        device,
        request.batch_size,
        request.max_seq_length,
    )
    labels = torch.tensor([r["label"] for r in rows])
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    predicted = logits.argmax(dim=-1)
    n = model.config.num_labels
    confusion = torch.zeros(n, n, dtype=torch.long)
    for truth, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        confusion[truth, guess] += 1
    return BertEvalResult(
        run_id=run_id,
        dataset=dataset,
        split=request.split,
        num_examples=len(rows),
        accuracy=float((predicted == labels).float().mean()),
        loss=loss,
        confusion=confusion.tolist(),
    )


def infer(request: BertInferenceRequest, runs_root: Path) -> BertInferenceResult:
    tokenizer, model, device = load_run(runs_root / request.run_id)
    logits = predict(
        request.texts, tokenizer, model, device, request.batch_size, request.max_seq_length
    )
    probabilities = logits.softmax(dim=-1)
    confidence, labels = probabilities.max(dim=-1)
    names = model.config.id2label or {}
    return BertInferenceResult(
        run_id=request.run_id,
        predictions=[
            Prediction(
                text=text,
                label=int(label),
                label_name=names.get(int(label)),
                confidence=float(conf),
            )
            for text, label, conf in zip(request.texts, labels, confidence, strict=True)
        ],
    )
