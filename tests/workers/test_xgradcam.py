"""XGrad-CAM against pytorch-grad-cam 1.5.7's XGradCAM at the same layer where its epsilon is
negligible, and against the published formula by hand where it is not."""

import pytest
import torch
from grad_cam_reference import (
    calibrated_resnet18,
    compared_with_pytorch_grad_cam,
    pytorch_grad_cam_layer_map,
    small_cnn,
)
from method_checks import EPS32, assert_untouched, float32_rounding, max_relative_deviation
from pytorch_grad_cam import XGradCAM
from torch import nn

from workers.methods import explain

PYTORCH_GRAD_CAM_EPSILON = 1e-7
"""What pytorch-grad-cam's XGradCAM adds to each channel's activation sum before dividing."""


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return calibrated_resnet18()


def epsilon_shift(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """A bound, per sample, on how far pytorch-grad-cam's epsilon moves its layer map.

    With S_k = Σ_ij A_k,ij > 0, its weight Σ_ij g·A / (S_k + ε) is the formula's less
    |Σ_ij g·A| · ε / (S_k (S_k + ε)) ≤ |Σ_ij g·A| · ε / S_k², so the map moves at most
    max_ij Σ_k that · A_k,ij; the ReLU and the bilinear upsampling cannot move it further. A
    channel with S_k = 0 (a ReLU's, all zero) weighs 0 either way.
    """
    sums = activations.sum(dim=(2, 3))
    assert bool((sums >= 0).all()), "a channel sums below 0: not a ReLU's output"
    products = (gradients * activations).sum(dim=(2, 3)).abs()
    positive = sums > 0
    shifts = torch.where(
        positive, products * PYTORCH_GRAD_CAM_EPSILON / sums.where(positive, 1) ** 2, 0
    )
    return (shifts[:, :, None, None] * activations).sum(dim=1).flatten(1).amax(1)


@pytest.mark.parametrize(
    ("model_name", "layer", "size", "targets"),
    [
        ("small_cnn", "0.6", 16, [0, 2, 1]),
        ("small_cnn", "0.2", 16, [4, 2, 0]),
        ("resnet18", "layer4", 96, [7, 412, 999]),
        ("resnet18", "layer3", 96, [1, 500, 42]),
    ],
)
def test_matches_pytorch_grad_cam(
    model_name: str, layer: str, size: int, targets: list[int], request: pytest.FixtureRequest
) -> None:
    # Every layer here is a ReLU's output: each channel's activations sum to 0 (a dead channel,
    # weight 0 either way) or to far more than pytorch-grad-cam's epsilon.
    model = small_cnn() if model_name == "small_cnn" else request.getfixturevalue("resnet")

    compared = compared_with_pytorch_grad_cam("xgradcam", model, layer, size, targets)

    result, reference, expected = compared.result, compared.reference, compared.expected
    assert reference.gradients is not None
    spans = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
    shift = float((epsilon_shift(reference.activations, reference.gradients) / spans).max())
    # The epsilon must not be what the comparison measures: its shift stays below a tenth of 1e-4.
    assert shift < 1e-5
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, float64's ~1e-15
    # more, and the epsilon's shift; far inside 1e-4 of the range.
    bound = float32_rounding(expected, 1) + shift
    assert max_relative_deviation(result.values, expected) <= bound
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model, frozen=True)


def hand_case(scale: float) -> tuple[nn.Module, torch.Tensor]:
    # The layer is an identity 1×1 convolution (A is the input, exactly: each output is 1 · x +
    # 0 · y + 0), which pytorch-grad-cam can hook; the head is global average pool + linear, so
    # the gradient of logit c at channel k is W[c, k] / 4 everywhere on the 2×2 map.
    model = nn.Sequential(
        nn.Conv2d(2, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    )
    identity, linear = model[0], model[3]
    assert isinstance(identity, nn.Conv2d)
    assert isinstance(linear, nn.Linear)
    identity.weight.data = torch.eye(2)[:, :, None, None]
    identity.bias.data.zero_()
    linear.weight.data = torch.tensor([[2.0, 4.0], [-4.0, 1.0]])
    linear.bias.data.zero_()
    model.double().eval().requires_grad_(False)
    inputs = scale * torch.tensor([[[[1.0, 2.0], [3.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]]).double()
    return model, inputs


@pytest.mark.parametrize("scale", [1.0, 1e-7])
def test_the_published_formula_by_hand_at_any_scale(scale: float) -> None:
    model, inputs = hand_case(scale)

    result = explain("xgradcam", model, inputs, torch.tensor([0]), {}, cam_layer="0")

    # With a constant gradient g_k, w_k = Σ_ij (A_k,ij / Σ A_k) · g_k = g_k whatever A's scale:
    # w = (0.5, 1), and the map is relu(0.5 · A_0 + A_1).
    expected = scale * torch.tensor([[[0.5, 2.0], [2.5, 1.0]]], dtype=torch.float64)
    # In float64, the map's rounding to float32 is ≤ eps32/2 of each value, with room for the
    # few float64 roundings before it.
    torch.testing.assert_close(result.values.double(), expected, rtol=EPS32, atol=0.0)


def test_pytorch_grad_cam_is_no_reference_for_small_activation_sums() -> None:
    # Activation sums of 8e-7 and 2e-7: its epsilon of 1e-7 scales the weights by 8/9 and 2/3.
    model, inputs = hand_case(1e-7)
    targets = torch.tensor([0])

    ours = explain("xgradcam", model, inputs, targets, {}, cam_layer="0").values
    theirs = pytorch_grad_cam_layer_map(XGradCAM, model, "0", inputs, targets).values

    # Its map is relu(0.5 · 8/9 · A_0 + 2/3 · A_1): 20% of the range from the formula's.
    assert max_relative_deviation(torch.relu(theirs), ours.double()) > 0.1
