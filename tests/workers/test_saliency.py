"""Saliency against the analytic gradient of a linear model and against Captum's Saliency."""

import pytest
import torch
from captum.attr import Saliency
from method_checks import DEVICES, EPS32, float32_rounding, max_relative_deviation
from method_models import small_cnn
from torch import nn

from workers.methods import explain


def linear_model() -> nn.Sequential:
    """In float64, where the gradient is the weight row exactly and its channel sum is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 6, 4))
    return model.double().eval().requires_grad_(False)


def test_equals_the_weight_rows_of_a_linear_model() -> None:
    model = linear_model()
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    weight = linear.weight
    inputs = torch.randn(3, 3, 5, 6).double()
    targets = torch.tensor([2, 0, 2])

    unsigned = explain("saliency", model, inputs, targets, {"abs": True}, cam_layer="1")
    signed = explain("saliency", model, inputs, targets, {"abs": False}, cam_layer="1")

    rows = weight[targets].view(3, 3, 5, 6)
    # The weights are float32 values: their largest magnitude is one exactly ...
    torch.testing.assert_close(unsigned.values.double(), rows.abs().amax(dim=1), rtol=0, atol=0)
    # ... and the exact sum of three is rounded to float32 once, by ≤ eps32/2 of each value.
    signed_values = signed.values.double()
    torch.testing.assert_close(signed_values, rows.sum(dim=1), rtol=EPS32 / 2, atol=0)
    assert not unsigned.signed
    assert signed.signed


@pytest.mark.parametrize("absolute", [True, False])
def test_matches_captum_on_a_small_cnn(absolute: bool) -> None:
    model = small_cnn()
    inputs = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 3, 1, 4])

    result = explain("saliency", model, inputs, targets, {"abs": absolute}, cam_layer="6")

    per_channel = Saliency(model).attribute(
        inputs.clone().requires_grad_(True), target=targets.tolist(), abs=absolute
    )
    expected = per_channel.amax(dim=1) if absolute else per_channel.sum(dim=1)
    assert result.values.shape == (4, 12, 12)
    assert result.values.dtype == torch.float32
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)


def test_abs_is_the_default() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 8, 8).double()
    targets = torch.tensor([1, 1])

    default = explain("saliency", model, inputs, targets, {}, cam_layer="6")
    explicit = explain("saliency", model, inputs, targets, {"abs": True}, cam_layer="6")

    assert not default.signed
    # The same float64 computation twice, each rounded to float32: at most 1 ulp apart.
    bound = float32_rounding(explicit.values, 1)
    assert max_relative_deviation(default.values, explicit.values) <= bound


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("saliency", model, inputs, targets, {}, cam_layer="6").values
    on_device = explain(
        "saliency", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="6"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): float64 maps ~1e-15 apart, each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
