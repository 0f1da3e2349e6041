"""Guided backprop against Captum's GuidedBackprop and a hand-derived case; no guided ReLU left
behind."""

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from method_checks import DEVICES, assert_untouched, float32_rounding, max_relative_deviation
from method_models import FunctionalReluCnn, calibrated_resnet18, small_cnn
from torch import nn

from workers.methods import explain
from workers.methods.base import input_gradient
from workers.methods.canonical import canonical_form
from workers.methods.guided_backprop import guided_gradient


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return calibrated_resnet18(size=32, passes=2)


def assert_unguided(model: nn.Module) -> None:
    """Untouched (`assert_untouched`), and every ReLU module still a plain nn.ReLU."""
    assert_untouched(model, frozen=True)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            assert type(module) is nn.ReLU


def captum_guided(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return CaptumGuidedBackprop(model).attribute(inputs, target=targets.tolist()).detach()


@pytest.mark.parametrize("absolute", [True, False])
def test_matches_captum_on_a_model_of_relu_modules(absolute: bool) -> None:
    model = small_cnn()
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 3, 1, 4])

    result = explain("guided_backprop", model, inputs, targets, {"abs": absolute}, cam_layer="6")

    reference = captum_guided(model, inputs, targets)
    expected = reference.abs().amax(1) if absolute else reference.sum(1)
    assert result.values.shape == (4, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed is not absolute
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_unguided(model)


def test_stays_guided_where_relus_are_functions_and_captum_degrades() -> None:
    modular = small_cnn()
    functional = FunctionalReluCnn(modular).eval()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([2, 0, 4])

    ours = guided_gradient(functional, inputs, targets)

    guided = captum_guided(modular, inputs, targets)
    plain = input_gradient(functional, inputs, targets)
    # Float64 gradients, never rounded to float32: they agree to float64's rounding, ~1e-16; one
    # float32 rounding (eps32 of the largest value) is room to spare, and ~1e-5 of a real bug.
    assert max_relative_deviation(ours, guided) <= float32_rounding(guided, 1)
    # Captum hooks nn.ReLU modules only: on F.relu it silently returns the plain gradient.
    unguided = captum_guided(functional, inputs, targets)
    assert max_relative_deviation(unguided, plain) <= float32_rounding(plain, 1)
    assert max_relative_deviation(ours, plain) > 0.1


def test_on_resnet_reusing_relu_modules_equals_captum_on_its_distinct_relus(
    resnet18: nn.Module,
) -> None:
    model = resnet18
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([7, 999])

    result = explain("guided_backprop", model, inputs, targets, {"abs": False}, cam_layer="layer4")

    # The canonical form has one nn.ReLU per call (checked in test_canonical), which Captum hooks.
    expected = captum_guided(canonical_form(model), inputs, targets).sum(1)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-15 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_unguided(model)


def test_reproduces_the_hand_derived_simple_conv_case() -> None:
    # conv1 (all-ones 3x3, biases -50/-75) on arange(16) gives [-5, 4, 31, 40] and
    # [-30, -21, 6, 15]; fc1 row 0 sends +1 to the first five units and -1 to the last three.
    # Guided: channel 0 passes +1 where its input is > 0 (windows 1, 2, 3); channel 1 passes
    # nothing (its only positive gradient sits where its input is negative). The input gradient
    # counts, per pixel, the windows 1-3 that cover it.
    model = BasicModel_ConvNet_One_Conv().eval().requires_grad_(False)
    inputs = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)

    result = explain("guided_backprop", model, inputs, torch.tensor([0]), {}, cam_layer="conv1")

    expected = torch.tensor([[[0.0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]]])
    # Every value on the way (inputs, weights, activations, gradients) is a small integer, which
    # float32 holds exactly whatever the order of the sums: the map is the hand result exactly.
    torch.testing.assert_close(result.values, expected, rtol=0.0, atol=0.0)


def test_leaves_no_guided_relu_in_the_model() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16).double()

    explain("guided_backprop", model, inputs, torch.tensor([0, 1]), {}, cam_layer="6")

    # The plain gradient is still the plain gradient: no guided ReLU leaked into the model.
    plain = input_gradient(model, inputs, torch.tensor([0, 1]))
    assert max_relative_deviation(plain, captum_guided(model, inputs, torch.tensor([0, 1]))) > 0.1
    assert_unguided(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("guided_backprop", model, inputs, targets, {}, cam_layer="6").values
    on_device = explain(
        "guided_backprop",
        model.to(device),
        inputs.to(device),
        targets.to(device),
        {},
        cam_layer="6",
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): float64 maps ~1e-15 apart, each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
