"""pytorch-grad-cam 1.5.7 as the reference of the CAM variants, and the models they are compared on.

pytorch-grad-cam rectifies each map, scales it to [0, 1] and resizes it with cv2; the variants are
compared before that, at the layer: `LayerMap` is what its `get_cam_image` computes there, inside
its own pass (its hooks, its backward of each row's target logit), with the activations and
gradients it read.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import resnet18

from workers.methods import AttributionMap, explain


@dataclass(frozen=True)
class LayerMap:
    """pytorch-grad-cam's unrectified map (N, h, w) at the layer, and the activations and
    gradients (N, K, h, w) it computed it from (gradients None for a gradient-free method), all
    float64 tensors holding the values it computed, in its own precision."""

    values: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor | None


def pytorch_grad_cam_layer_map(  # noqa: PLR0913 - the model, the layer, the batch, its reading
    cam_class: type[BaseCAM],
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LayerMap:
    """Run `cam_class` of pytorch-grad-cam on `model` at the named layer for each row's target,
    reading the layer's output through `reshape_transform` (a transformer's tokens as a grid)."""
    # Its hooks only record gradients of outputs that require grad, so it needs parameters that
    # do; a copy keeps the frozen model as the method under test receives it.
    reference = copy.deepcopy(model).requires_grad_(True)
    cam = cam_class(
        reference, [reference.get_submodule(layer)], reshape_transform=reshape_transform
    )
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    get_cam_image = cam.get_cam_image

    def recorded(  # noqa: PLR0913 - the signature of get_cam_image, which it wraps
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[ClassifierOutputTarget],
        activations: np.ndarray,
        grads: np.ndarray | None,
        eigen_smooth: bool,
    ) -> np.ndarray:
        values = get_cam_image(
            input_tensor, target_layer, targets, activations, grads, eigen_smooth
        )
        calls.append((values, activations, grads))
        return values

    cam.get_cam_image = recorded  # type: ignore[method-assign]
    try:
        cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        cam.activations_and_grads.release()
    ((values, activations, grads),) = calls
    return LayerMap(
        values=torch.from_numpy(np.asarray(values, dtype=np.float64)),
        activations=torch.from_numpy(np.asarray(activations, dtype=np.float64)),
        gradients=None if grads is None else torch.from_numpy(np.asarray(grads, dtype=np.float64)),
    )


REFERENCES: dict[str, type[BaseCAM]] = {
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "xgradcam": XGradCAM,
}
"""pytorch-grad-cam's class for each gradient-weighted CAM variant compared with it."""


@dataclass(frozen=True)
class Comparison:
    """A method's maps beside pytorch-grad-cam's at the same layer, for the three rows of
    `batch_with_a_repeated_image(size, seed=1)`: its result, pytorch-grad-cam's layer map, and
    that map rectified and upsampled to the input, as the method's map should be."""

    result: AttributionMap
    reference: LayerMap
    expected: torch.Tensor


def compared_with_pytorch_grad_cam(
    method: str, model: nn.Module, layer: str, size: int, targets: list[int]
) -> Comparison:
    """Run `method` and its pytorch-grad-cam twin on the same batch and targets; the method's
    map is (3, size, size) float32 and unsigned."""
    inputs = batch_with_a_repeated_image(size, seed=1)
    rows = torch.tensor(targets)
    result = explain(method, model, inputs, rows, {}, cam_layer=layer)
    reference = pytorch_grad_cam_layer_map(REFERENCES[method], model, layer, inputs, rows)
    assert result.values.shape == (3, size, size)
    assert result.values.dtype == torch.float32
    assert not result.signed
    return Comparison(result, reference, rectified_upsampled(reference.values, (size, size)))


def rectified_upsampled(layer_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """relu of an (N, h, w) map, upsampled bilinearly (half-pixel centres) to `size`: (N, H, W)."""
    rectified = torch.relu(layer_map)[:, None]
    return F.interpolate(rectified, size=size, mode="bilinear", align_corners=False)[:, 0]


def small_cnn() -> nn.Sequential:
    """Conv–BN–ReLU, max-pool, Conv–BN–ReLU, global average pool, linear; eval mode, float64.

    In float64 so that the method and pytorch-grad-cam, each summing in its own order, agree to
    ~1e-16 and no ReLU or max-pool near its kink or tie is decided differently by their
    roundings: what separates them is the map's rounding to float32.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.empty(module.num_features).uniform_(-0.5, 0.5)
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval().requires_grad_(False)


def calibrated_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with random weights and BatchNorm statistics taken from random
    data, to keep its activations sane; eval mode, float64 (for the reason `small_cnn` gives)."""
    torch.manual_seed(0)
    model = resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64))
    return model.double().eval().requires_grad_(False)


def batch_with_a_repeated_image(size: int, seed: int) -> torch.Tensor:
    """Three float64 images (3, 3, size, size): one image twice, then another."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.stack([images[0], images[0], images[1]]).double()
