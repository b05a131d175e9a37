"""The parts of asynchronous saves: a host copy that later training cannot change, tied
weights kept tied, buffers reused from save to save, one write in flight and its error kept."""

from __future__ import annotations

import threading

import pytest
import torch
from tempotrain_workers.async_checkpoints import BackgroundWriter, HostCopier


def test_host_copy_holds_the_values_of_its_moment() -> None:
    weight = torch.ones(4, 3)
    state = {"w": weight, "step": 7, "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}
    copier = HostCopier()
    copied = copier.copy(state, "model")
    weight.add_(1.0)  # the optimizer steps on in place
    state["groups"][0]["lr"] = 0.2  # type: ignore[index]
    assert torch.equal(copied["w"], torch.ones(4, 3))
    assert copied["groups"] == [{"lr": 0.1, "betas": (0.9, 0.99)}] and copied["step"] == 7


def test_tied_tensors_share_one_copy_and_buffers_are_reused() -> None:
    shared = torch.arange(6.0)
    copier = HostCopier()
    first = copier.copy({"embeddings": shared, "decoder": shared.view(6)}, "model")
    assert first["embeddings"].data_ptr() == first["decoder"].data_ptr()
    shared.mul_(2)
    second = copier.copy({"embeddings": shared, "decoder": shared}, "model")
    assert second["embeddings"].data_ptr() == first["embeddings"].data_ptr()  # no new allocation
    assert torch.equal(second["embeddings"], torch.arange(6.0) * 2)
    reshaped = copier.copy({"embeddings": torch.zeros(2, 3)}, "model")["embeddings"]
    assert reshaped.shape == (2, 3)  # a changed shape gets a buffer of its own


def test_one_write_in_flight_and_a_failed_one_raises_at_the_next_wait() -> None:
    writer = BackgroundWriter()
    release = threading.Event()
    order: list[str] = []

    def slow() -> None:
        release.wait(timeout=30)
        order.append("first")

    writer.submit(slow)
    second = threading.Thread(target=writer.submit, args=(lambda: order.append("second"),))
    second.start()
    second.join(timeout=0.2)
    assert second.is_alive(), "a second save started while the first was in flight"
    release.set()
    second.join(timeout=30)
    writer.wait()
    assert order == ["first", "second"]

    def failing() -> None:
        raise OSError("No space left on device")

    writer.submit(failing)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert writer.wait() == 0.0  # reported once
