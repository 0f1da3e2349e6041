"""LayerCAM against pytorch-grad-cam 1.5.7's LayerCAM at the same layer, and by hand."""

import pytest
import torch
from grad_cam_reference import (
    calibrated_resnet18,
    compared_with_pytorch_grad_cam,
    small_cnn,
)
from method_checks import assert_untouched, float32_rounding, max_relative_deviation
from torch import nn

from workers.methods import explain


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return calibrated_resnet18()


@pytest.mark.parametrize(
    ("model_name", "layer", "size", "targets"),
    [
        ("small_cnn", "0.6", 16, [0, 2, 1]),
        ("small_cnn", "0.2", 16, [4, 2, 0]),
        ("resnet18", "layer4", 96, [7, 412, 999]),
        ("resnet18", "layer2", 96, [1, 500, 42]),
    ],
)
def test_matches_pytorch_grad_cam(
    model_name: str, layer: str, size: int, targets: list[int], request: pytest.FixtureRequest
) -> None:
    model = small_cnn() if model_name == "small_cnn" else request.getfixturevalue("resnet")

    compared = compared_with_pytorch_grad_cam("layercam", model, layer, size, targets)

    result, expected = compared.result, compared.expected
    # Both in float64, pytorch-grad-cam's too: the map's rounding to float32, ≤ eps32/2 of each
    # value, and float64's ~1e-15 more; far inside 1e-4 of the range.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model, frozen=True)


def test_a_hand_checked_case() -> None:
    # The layer is the input itself; the head is global average pool + linear, so the gradient
    # of logit c at channel k is W[c, k] / 4 everywhere on the 2×2 map.
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    linear = model[3]
    assert isinstance(linear, nn.Linear)
    linear.weight.data = torch.tensor([[2.0, -4.0], [-4.0, 1.0]])
    linear.bias.data.zero_()
    model.double().eval().requires_grad_(False)
    inputs = torch.tensor([[[[1.0, 2.0], [3.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]]).double()

    result = explain(
        "layercam", model, inputs.expand(2, -1, -1, -1), torch.tensor([0, 1]), {}, cam_layer="0"
    )

    # Target 0: channel 1's gradient, -1, is cut to 0, leaving 0.5 · A_0, where Grad-CAM's
    # relu(0.5 · A_0 - A_1) would be [[0.5, 0], [0.5, 1]]. Target 1: only channel 1 counts,
    # with 0.25 · A_1.
    expected = torch.tensor(
        [[[0.5, 1.0], [1.5, 1.0]], [[0.0, 0.25], [0.25, 0.0]]], dtype=torch.float64
    )
    # Products and sums of multiples of 1/4 below 2: exact in float32.
    torch.testing.assert_close(result.values.double(), expected, rtol=0.0, atol=0.0)
