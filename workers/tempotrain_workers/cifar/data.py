"""Training data: real CIFAR-10 (torchvision, cached under the datasets root) or a synthetic,
learnable stand-in generated from the seed (demos and tests: no download, no I/O)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from tempotrain_workers.api import CifarDataset, ScaleTrainRequest

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def synthetic(num_train: int, num_test: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Ten classes, each a smooth random colour pattern plus per-image noise: a CNN learns it
    within an epoch, so accuracy separates a working training setup from a broken one."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(NUM_CLASSES, 3, 4, 4, generator=generator) * 2 - 1
    prototypes = torch.nn.functional.interpolate(coarse, size=IMAGE_SHAPE[1:], mode="bilinear")

    def split(count: int) -> TensorDataset:
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        noise = torch.randn(count, *IMAGE_SHAPE, generator=generator)
        return TensorDataset(prototypes[labels] + noise, labels)

    return split(num_train), split(num_test)


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Several drivers may share one datasets volume: one downloads, the others wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_cifar10(root: Path) -> None:
    """Fetch CIFAR-10 once into `root` (the driver does this before any Ray worker starts)."""
    from torchvision.datasets import CIFAR10

    with _exclusive(root / ".download.lock"):
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)


ImageDataset = Dataset[tuple[torch.Tensor, int]]


def cifar10(root: Path) -> tuple[ImageDataset, ImageDataset]:
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_transform = transforms.Compose([transforms.ToTensor(), normalize])
    return (
        CIFAR10(str(root), train=True, download=False, transform=train_transform),
        CIFAR10(str(root), train=False, download=False, transform=test_transform),
    )


def load(request: ScaleTrainRequest, datasets_dir: Path) -> tuple[ImageDataset, ImageDataset]:
    if request.dataset == CifarDataset.CIFAR10:
        return cifar10(datasets_dir / "cifar10")
    train, test = synthetic(
        request.synthetic_size, max(64, request.synthetic_size // 5), request.seed
    )
    return train, test  # type: ignore[return-value]
