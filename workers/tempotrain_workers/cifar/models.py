"""The two models a Cifar10Scaling can train."""

from __future__ import annotations

import torch
from torch import nn

from tempotrain_workers.api import CifarModel
from tempotrain_workers.cifar.data import NUM_CLASSES


class SimpleCifarNet(nn.Module):
    """Two conv blocks and a small MLP head: fast enough to scale-test on CPUs."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # type: ignore[no-any-return]


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem: a 3x3 first conv, no max-pool (the
    ImageNet stem would shrink a 32x32 image to 8x8 before the first block)."""
    from torchvision.models import resnet18 as torchvision_resnet18

    model: nn.Module = torchvision_resnet18(num_classes=NUM_CLASSES)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build(model: CifarModel) -> nn.Module:
    if model == CifarModel.RESNET18:
        return resnet18()
    return SimpleCifarNet()
