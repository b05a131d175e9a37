"""`--allowed-image`: an experiment's own images must match one of the operator's patterns."""

from __future__ import annotations

import pytest
from tempotrain_operator.lifecycle import image_errors
from tempotrain_operator.settings import parse_settings


def test_any_image_is_allowed_without_patterns() -> None:
    assert image_errors({"spec.workers.image": "anything:1"}, ()) == []


def test_images_outside_the_patterns_are_refused_with_their_field_path() -> None:
    allowed = ("registry.example.com/ml/*", "ghcr.io/tempotrain/workers:*")
    images = {
        "spec.workers.image": "ghcr.io/tempotrain/workers:0.1.0",
        "spec.ray.image": "docker.io/someone/miner:latest",
        "spec.image.image": None,  # unset: the operator's own image, not the experiment's
    }
    errors = image_errors(images, allowed)
    assert len(errors) == 1
    assert errors[0].startswith("spec.ray.image: image 'docker.io/someone/miner:latest'")
    assert "registry.example.com/ml/*" in errors[0]


def test_patterns_come_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = parse_settings(["--allowed-image", "a/*", "--allowed-image", "b:1"])
    assert flags.allowed_images == ("a/*", "b:1")
    monkeypatch.setenv("TEMPOTRAIN_ALLOWED_IMAGES", "c/*,d:2")
    assert parse_settings([]).allowed_images == ("c/*", "d:2")
    assert parse_settings(["--allowed-image", "e"]).allowed_images == ("e",)
