"""Tiny models whose outputs and maps are known by construction: a multi-label head, and the
three kinds of degenerate map. The worker imports them by `module:factory` (this folder is put
on its PYTHONPATH); `write_model` stores one with the weights the tests rely on."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

SIZE = 16
INPUT = {"channels": 1, "height": SIZE, "width": SIZE, "mean": [0.0], "std": [1.0]}
"""Pixels in [0, 1] reach the model as they are (mean 0, std 1)."""


class PooledNet(nn.Module):
    """conv (1×1 or 3×3), an optional ReLU or √|·|, global average pool, linear head."""

    def __init__(  # noqa: PLR0913 - the architecture's few sizes, by name
        self,
        channels: int,
        classes: int,
        kernel: int = 1,
        nonlinearity: str = "relu",
        in_channels: int = 1,
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2),
            nn.ReLU() if nonlinearity == "relu" else nn.Identity(),
        )
        self.nonlinearity = nonlinearity
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if self.nonlinearity == "sqrt":
            # d√|u|/du is infinite at u = 0, and |u|'s derivative there is 0: NaN gradients.
            features = features.abs().sqrt()
        return self.classifier(self.pool(features).flatten(1))


def build_pooled_net(  # noqa: PLR0913 - as PooledNet
    channels: int, classes: int, kernel: int = 1, nonlinearity: str = "relu", in_channels: int = 1
) -> PooledNet:
    return PooledNet(channels, classes, kernel, nonlinearity, in_channels)


MULTI_LABEL_BIAS = (1.5, 0.5, -2.0)


def multi_label_weights() -> dict[str, torch.Tensor]:
    """Features (m, m/2) for an image of mean pixel m, logits (1.5 + m, 0.5 + m/2, −2 − 1.5 m):
    under a sigmoid the first two labels are above 0.5 on every image, the third below."""
    return {
        "features.0.weight": torch.tensor([1.0, 0.5]).view(2, 1, 1, 1),
        "features.0.bias": torch.zeros(2),
        "classifier.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]),
        "classifier.bias": torch.tensor(MULTI_LABEL_BIAS),
    }


def multi_label_logits(mean_pixel: float) -> list[float]:
    """The logits `multi_label_weights` gives an image of mean pixel `mean_pixel`, exactly."""
    m = mean_pixel
    return [1.5 + m, 0.5 + 0.5 * m, -2.0 - 1.5 * m]


def linear_weights() -> dict[str, torch.Tensor]:
    """A linear model: logit 0 = mean pixel, so its input gradient is 1/(H·W) everywhere."""
    return {
        "features.0.weight": torch.ones(1, 1, 1, 1),
        "features.0.bias": torch.zeros(1),
        "classifier.weight": torch.tensor([[1.0], [-1.0]]),
        "classifier.bias": torch.zeros(2),
    }


def negative_evidence_weights() -> dict[str, torch.Tensor]:
    """Two non-negative ReLU channels (positive 3×3 kernels) that only lower class 0: masking a
    non-black image with any channel's map drops p(class 0) below its 0.5 on the black input,
    so every Score-CAM weight of class 0 is negative and its map is zero."""
    return {
        "features.0.weight": torch.stack(
            [torch.full((1, 3, 3), 0.1), torch.arange(1.0, 10.0).view(1, 3, 3) / 20]
        ),
        "features.0.bias": torch.zeros(2),
        "classifier.weight": torch.tensor([[-1.0, -1.0], [1.0, 1.0]]),
        "classifier.bias": torch.zeros(2),
    }


def frame_means_weights() -> dict[str, torch.Tensor]:
    """A two-channel linear model whose logit c is the mean of input channel c."""
    return {
        "features.0.weight": torch.eye(2).view(2, 2, 1, 1),
        "features.0.bias": torch.zeros(2),
        "classifier.weight": torch.eye(2),
        "classifier.bias": torch.zeros(2),
    }


def write_model(  # noqa: PLR0913 - a manifest's few fields, by name
    repository: Path,
    model_id: str,
    weights: dict[str, torch.Tensor],
    kwargs: dict[str, object],
    labels: list[str],
    output: dict[str, object] | None = None,
    model_input: dict[str, object] | None = None,
) -> None:
    """`repository/<model_id>/1/` with the weights in safetensors and a `PooledNet` manifest."""
    folder = repository / model_id / "1"
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "model.safetensors"))
    manifest: dict[str, object] = {
        "id": model_id,
        "version": "1",
        "format": "safetensors",
        "architecture": {"factory": "family_models:build_pooled_net", "kwargs": kwargs},
        "labels": labels,
        "input": model_input or INPUT,
        "cam_layer": "features.1",
    }
    if output is not None:
        manifest["output"] = output
    (folder / "manifest.json").write_text(json.dumps(manifest))
