"""Generated inputs for tests, demos and benchmarks (no downloads): a learnable sentiment
dataset, and a tiny BERT to train on it in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = [
    "great",
    "wonderful",
    "delightful",
    "excellent",
    "superb",
    "lovely",
    "brilliant",
    "charming",
    "moving",
    "fantastic",
]
NEGATIVE = [
    "awful",
    "terrible",
    "boring",
    "dreadful",
    "dull",
    "painful",
    "horrible",
    "tedious",
    "clumsy",
    "disappointing",
]
SUBJECTS = [
    "the film",
    "this movie",
    "the plot",
    "the acting",
    "the soundtrack",
    "the ending",
    "the script",
    "the cast",
    "the story",
    "the direction",
]
TEMPLATES = [
    "{s} was {w}",
    "i found {s} {w}",
    "{s} is truly {w}",
    "honestly, {s} felt {w}",
    "what a {w} experience, {s} especially",
]


def sentiment_rows(count: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=word)
        rows.append({"sentence": text, "label": label})
    return rows


def write_sentiment_jsonl(path: Path, count: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in sentiment_rows(count, seed):
            f.write(json.dumps(row) + "\n")
    return path


def write_tiny_bert(target: Path, tokenizer_from: Path) -> Path:
    """A 2-layer, 32-wide BERT classifier (seeded) with the tokenizer of ``tokenizer_from``
    (a local model folder): trains in seconds on CPU, for tests and benches."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config.num_labels = 2  # a sentiment head: negative, positive
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
