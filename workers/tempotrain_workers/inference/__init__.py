"""Chunked, resumable batch inference (issue 7; work in progress): chunk outputs with markers,
skip what verifies, merge. Imports torch/transformers/pyarrow lazily."""
