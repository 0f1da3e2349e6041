"""The small models the method tests explain: built here once, for every method's tests.

Each is in eval mode with frozen parameters, as the worker serves a model; the small ones are in
float64, so that two ways of computing a map (a reference's and the method's, a batch and its
rows, two devices) agree to far below float32's precision and no ReLU or max-pool near its kink
or tie is decided differently by their roundings: what separates them is the map's rounding to
float32 and whatever float32 arithmetic the method does on purpose.
"""

from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from workers.repository import load_model

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
"""The shipped demo model's version folder (safetensors and its ONNX twin)."""

Model = TypeVar("Model", bound=nn.Module)


def frozen(model: Model) -> Model:
    """`model` in float64, in eval mode, without parameter gradients."""
    return model.double().eval().requires_grad_(False)


def small_cnn(channels: int = 3, classes: int = 5, *, inplace: bool = False) -> nn.Sequential:
    """Conv–BN–ReLU, max-pool, Conv–BN–ReLU, global average pool, flatten, linear; in float64.

    Every ReLU is its own module (`inplace` makes them in-place); layer "6" is the last with a
    spatial output, "2" and "5" are earlier ones. BatchNorm's statistics and affine parameters are
    random, so that it neither vanishes nor is the identity.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.empty(module.num_features).uniform_(-0.5, 0.5)
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return frozen(model)


class FunctionalReluCnn(nn.Module):
    """A `small_cnn`'s layers, with the ReLUs called as F.relu instead of their modules."""

    def __init__(self, modular: nn.Sequential) -> None:
        super().__init__()
        self.layers = modular

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(x) if isinstance(layer, nn.ReLU) else layer(x)
        return x


class ResidualNet(nn.Module):
    """Two residual blocks that share one in-place nn.ReLU module, as torchvision's ResNet blocks
    do, and a spatial mean + linear head; "relu" is called three times per forward pass."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.conv1(x) + x)
        x = self.relu(self.conv2(x) + x)
        return self.head(x.mean(dim=(2, 3)))


def residual_net() -> ResidualNet:
    """A seeded `ResidualNet`, in float64."""
    torch.manual_seed(0)
    return frozen(ResidualNet())


def calibrated(
    model: Model, size: int, *, passes: int = 3, batch: int = 8, seed: int | None = None
) -> Model:
    """A random-weight torchvision model whose BatchNorm statistics are the cumulative average
    over `passes` batches of random `size` × `size` RGB images (from a generator seeded with
    `seed`, or the global one), so that its activations stay of order one; frozen, in float32."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, size, size, generator=generator))
    return model.eval().requires_grad_(False)


def calibrated_resnet18(size: int = 64, passes: int = 3) -> nn.Module:
    """torchvision's ResNet-18, seeded random weights, BatchNorm calibrated; in float64, where no
    ReLU or max-pool of the many is near enough its kink to be decided by rounding."""
    torch.manual_seed(0)
    return frozen(calibrated(resnet18(weights=None), size, passes=passes))


def demo_model() -> nn.Module:
    """The shipped demo model's module as the worker loads it: float32, frozen, on the CPU."""
    return load_model(DEMO_MODEL, torch.device("cpu")).module


def pooled_2x2() -> nn.Sequential:
    """Conv–ReLU features pooled to 2 × 2 and flattened into a linear layer: a model with a CAM
    layer but no global-average-pool + linear head; in float64."""
    torch.manual_seed(0)
    return frozen(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
    )


class DataDependent(nn.Module):
    """A `small_cnn` behind a branch on a tensor value, which torch.fx cannot trace.

    The branch guards against non-finite inputs, so on finite ones every row goes the same way
    whatever else is in the batch: the rows do not interact.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if bool(x.isfinite().all()) else self.body(x.nan_to_num())


def data_dependent() -> DataDependent:
    return frozen(DataDependent())
