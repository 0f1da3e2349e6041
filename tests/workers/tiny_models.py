"""Tiny networks that test manifests name as `tiny_models:<factory>`."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Conv–BN–ReLU, strided Conv–ReLU, global average pool, linear head."""

    def __init__(self, channels: int, classes: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(images)).flatten(1))


def build_tiny_cnn(channels: int = 1, classes: int = 3, width: int = 4) -> TinyCNN:
    """A freshly initialised `TinyCNN`."""
    return TinyCNN(channels, classes, width)


def build_not_a_module() -> str:
    """A factory that returns something other than a network."""
    return "not a network"


class PairNet(nn.Module):
    """A `TinyCNN` whose forward answers a (logits, features) pair rather than a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN(channels=1, classes=3, width=4)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(images), self.net.features(images)


def build_pair_net() -> PairNet:
    return PairNet()
