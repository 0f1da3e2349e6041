"""The `demo-lesions` network: four conv blocks, then a global-average-pool and a linear head."""

from itertools import pairwise

import torch
from torch import nn


class LesionNet(nn.Module):
    """Conv blocks in `features`, `pool` (global average) and `classifier` (linear), so CAM applies.

    Input: (N, 1, 128, 128), normalised as the manifest says; output: (N, num_classes) logits.
    The last ReLU of `features` gives a 16×16 map at 128×128 input.
    """

    def __init__(self, num_classes: int = 3, width: int = 16) -> None:
        super().__init__()
        channels = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for block, (c_in, c_out) in enumerate(pairwise(channels)):
            if block > 0:
                layers.append(nn.MaxPool2d(2))
            # One ReLU instance per block: hooks on a shared module would fire at every use.
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_lesion_net(num_classes: int = 3, width: int = 16) -> nn.Module:
    """A fresh, untrained `LesionNet`; the factory the manifest's architecture names."""
    return LesionNet(num_classes=num_classes, width=width)
