"""Test models with controlled faults, served by real worker processes from a real repository.

The worker imports them by `module:factory` (this folder is put on the worker's PYTHONPATH).
"""

import time

import torch
from torch import nn

POISON = 0.99
"""A sample whose every normalised pixel exceeds this (a white image) makes the model raise."""


class FaultyNet(nn.Module):
    """A tiny GAP + linear CNN that sleeps on every forward pass and fails on demand."""

    def __init__(self, delay_s: float = 0.0, oom_above: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4, 2)
        self.delay_s = delay_s
        self.oom_above = oom_above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.oom_above and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"simulated: a batch of {x.shape[0]} does not fit")
        if bool((x.flatten(1).amin(1) > POISON).any()):
            raise RuntimeError("simulated failure on a poisoned image")
        time.sleep(self.delay_s)
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_faulty_net(delay_s: float = 0.0, oom_above: int = 0) -> FaultyNet:
    return FaultyNet(delay_s=delay_s, oom_above=oom_above)
