"""HiResCAM against pytorch-grad-cam 1.5.7's HiResCAM at the same layer, and its relation to
Grad-CAM where the gradient is constant over the layer."""

import pytest
import torch
from grad_cam_reference import (
    batch_with_a_repeated_image,
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
        ("resnet18", "layer3", 96, [1, 500, 42]),
    ],
)
def test_matches_pytorch_grad_cam(
    model_name: str, layer: str, size: int, targets: list[int], request: pytest.FixtureRequest
) -> None:
    model = small_cnn() if model_name == "small_cnn" else request.getfixturevalue("resnet")

    compared = compared_with_pytorch_grad_cam("hirescam", model, layer, size, targets)

    result, expected = compared.result, compared.expected
    # Both in float64, pytorch-grad-cam's too: the map's rounding to float32, ≤ eps32/2 of each
    # value, and float64's ~1e-15 more; far inside 1e-4 of the range.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model, frozen=True)


def test_equals_gradcam_times_the_layers_size_where_the_gradient_is_constant() -> None:
    # Right before a global average pool and a linear head, dY/dA_k is W[c, k] / (h·w) at every
    # position, so the element-wise weighting is Grad-CAM's channel mean.
    model = small_cnn()
    inputs = batch_with_a_repeated_image(16, seed=2)
    targets = torch.tensor([1, 4, 2])

    hirescam = explain("hirescam", model, inputs, targets, {}, cam_layer="0.6").values
    gradcam = explain("gradcam", model, inputs, targets, {}, cam_layer="0.6").values

    # Float64 maps ~1e-16 apart, each rounded to float32: at most 1 ulp ≤ eps32 · |value| apart.
    assert max_relative_deviation(hirescam, gradcam) <= float32_rounding(gradcam, 1)
