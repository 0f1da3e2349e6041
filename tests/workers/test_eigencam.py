"""Eigen-CAM against pytorch-grad-cam 1.5.7's EigenCAM at the same layer, by hand, and without
any gradient."""

import numpy as np
import pytest
import torch
from grad_cam_reference import (
    batch_with_a_repeated_image,
    calibrated_resnet18,
    pytorch_grad_cam_layer_map,
    rectified_upsampled,
    small_cnn,
)
from method_checks import (
    DEVICES,
    EPS32,
    assert_untouched,
    float32_rounding,
    max_relative_deviation,
)
from pytorch_grad_cam import EigenCAM
from torch import nn

from workers.methods import MethodParameterError, TargetError, explain


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return calibrated_resnet18()


def with_the_sign_fixed(projection: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map negated where |min| > |max|, as pytorch-grad-cam 1.5.7's
    `get_2d_projection_with_sign_correction` does (Seg-Eigen-CAM's Eq. 13)."""
    flat = projection.flatten(1)
    flip = flat.amin(1).abs() > flat.amax(1).abs()
    return torch.where(flip[:, None, None], -projection, projection)


@pytest.mark.parametrize(
    ("model_name", "layer", "size"),
    [
        ("small_cnn", "0.6", 16),
        ("small_cnn", "0.2", 16),
        ("resnet18", "layer4", 96),
        ("resnet18", "layer3", 96),
    ],
)
def test_matches_pytorch_grad_cam(
    model_name: str, layer: str, size: int, request: pytest.FixtureRequest
) -> None:
    model = small_cnn() if model_name == "small_cnn" else request.getfixturevalue("resnet")
    inputs = batch_with_a_repeated_image(size, seed=1)
    targets = torch.tensor([0, 3, 1])

    result = explain("eigencam", model, inputs, targets, {}, cam_layer=layer)

    reference = pytorch_grad_cam_layer_map(EigenCAM, model, layer, inputs, targets)
    assert reference.gradients is None  # it ran no backward pass either
    layer_map = torch.relu(with_the_sign_fixed(reference.values))
    expected = rectified_upsampled(layer_map, (size, size))
    assert result.values.shape == (3, size, size)
    assert result.values.dtype == torch.float32
    assert not result.signed
    # The first singular vector is as well defined as the gap to the second singular value
    # allows: with a relative gap above 1e-3, float64's SVD fixes it to ~1e-12.
    flat = reference.activations.flatten(2)
    singular = torch.linalg.svdvals((flat - flat.mean(dim=2, keepdim=True)).mT)
    assert bool(((singular[:, 0] - singular[:, 1]) / singular[:, 0] > 1e-3).all())
    # The sign is decided far from a tie: float32's roundings cannot turn it.
    extremes = reference.values.flatten(1)
    margin = (extremes.amin(1).abs() - extremes.amax(1).abs()).abs()
    assert bool((margin > 1e-3 * (extremes.amax(1) - extremes.amin(1))).all())
    # pytorch-grad-cam rounds its projection to float32 (≤ eps32/2 of max |p|) and the method
    # its map (as much again), where max |p| is the rectified layer map's largest value; twice
    # that leaves room for float64's ~1e-12. Far inside 1e-4 of the range.
    bound = float32_rounding(expected, 2, magnitude=layer_map)
    assert max_relative_deviation(result.values, expected) <= bound
    # One map per image, whatever the target.
    assert torch.equal(result.values[0], result.values[1])
    assert not torch.allclose(result.values[0], result.values[2])
    assert_untouched(model, frozen=True)


def test_a_rank_one_case_by_hand() -> None:
    # The layer is the input, its channels a_k · f + b_k: centred, a_k · (f - mean f), whose
    # first right singular vector is ±a / |a|, so p = ±|a| · (f - mean f) = ±5 · (f - 1) here:
    # ±[[15, 0, -5], [0, -5, -5]], whose larger end, at the 4, the sign makes positive.
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    f = torch.tensor([[4.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([3.0, -4.0], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    inputs = (a[:, None, None] * f + b[:, None, None])[None]

    result = explain("eigencam", model, inputs, torch.tensor([0]), {}, cam_layer="0")

    expected = torch.relu(5.0 * (f - 1.0))[None]
    # Float64 arithmetic and SVD (~1e-15) before the map's rounding to float32, ≤ eps32/2 each.
    torch.testing.assert_close(result.values.double(), expected, rtol=EPS32, atol=1e-12)


class Numpy(nn.Module):
    """The logits through numpy: the same numbers, with no autograd graph behind them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.detach().cpu().numpy()))


def test_needs_no_gradient() -> None:
    model = nn.Sequential(small_cnn(), Numpy()).eval()
    inputs = batch_with_a_repeated_image(16, seed=2)
    targets = torch.tensor([0, 1, 2])

    result = explain("eigencam", model, inputs, targets, {}, cam_layer="0.0.6")

    # The same maps as on the model whose graph is whole, where Grad-CAM cannot run at all.
    plain = explain("eigencam", small_cnn(), inputs, targets, {}, cam_layer="0.6")
    assert torch.equal(result.values, plain.values)
    with pytest.raises(RuntimeError, match="does not require grad"):
        explain("gradcam", model, inputs, targets, {}, cam_layer="0.0.6")


def test_a_target_out_of_range_is_refused() -> None:
    model = small_cnn()

    with pytest.raises(TargetError):
        explain(
            "eigencam",
            model,
            torch.randn(2, 3, 8, 8).double(),
            torch.tensor([0, 5]),
            {},
            cam_layer="0.6",
        )

    assert_untouched(model)


def test_rejects_a_layer_without_a_spatial_output() -> None:
    with pytest.raises(MethodParameterError, match="eigencam needs a layer") as caught:
        explain(
            "eigencam",
            small_cnn(),
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {},
            cam_layer="2",
        )
    assert caught.value.parameter == "layer"


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("eigencam", model, inputs, targets, {}, cam_layer="0.6").values
    on_device = explain(
        "eigencam", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="0.6"
    )

    assert on_device.values.device.type == device
    # In float64: maps ~1e-15 apart whatever SVD each device runs (the sign is fixed, not
    # left to it), each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
