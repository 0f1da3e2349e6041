"""Guided backprop against Captum's GuidedBackprop, a hand-derived case, and model hygiene."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from method_checks import DEVICES, float32_rounding, max_relative_deviation
from torch import nn
from torchvision.models import resnet18

from workers.methods import explain
from workers.methods.base import input_gradient
from workers.methods.canonical import canonical_form
from workers.methods.guided_backprop import guided_gradient


def small_cnn() -> nn.Sequential:
    """Conv–BN–ReLU blocks with a max-pool and a GAP + linear head; every ReLU its own module; in
    float64.

    In float64 so that two ways of computing a map (Captum's and the method's, a batch and its
    rows, two devices) agree to far below float32's precision, and no ReLU or max-pool near its
    kink or tie is decided differently by their roundings: what separates them is the map's
    rounding to float32.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval().requires_grad_(False)


class FunctionalCnn(nn.Module):
    """`small_cnn`'s layers, with the ReLUs called as F.relu instead of modules."""

    def __init__(self, modular: nn.Sequential) -> None:
        super().__init__()
        self.layers = modular

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(x) if isinstance(layer, nn.ReLU) else layer(x)
        return x


@pytest.fixture(scope="module")
def calibrated_resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
    # In float64, for the same reason as `small_cnn`.
    return model.double().eval().requires_grad_(False)


def captum_guided(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return CaptumGuidedBackprop(model).attribute(inputs, target=targets.tolist()).detach()


def assert_untouched(model: nn.Module) -> None:
    for parameter in model.parameters():
        assert parameter.grad is None
        assert not parameter.requires_grad
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
        assert not module._backward_pre_hooks
        if isinstance(module, nn.ReLU):
            assert type(module) is nn.ReLU


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
    assert_untouched(model)


def test_stays_guided_where_relus_are_functions_and_captum_degrades() -> None:
    modular = small_cnn()
    functional = FunctionalCnn(modular).eval()
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
    calibrated_resnet18: nn.Module,
) -> None:
    model = calibrated_resnet18
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([7, 999])

    result = explain("guided_backprop", model, inputs, targets, {"abs": False}, cam_layer="layer4")

    # The canonical form has one nn.ReLU per call (checked in test_canonical), which Captum hooks.
    expected = captum_guided(canonical_form(model), inputs, targets).sum(1)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-15 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(model)


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


def test_a_batch_equals_single_image_calls() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)).double()
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 2, 1])

    batch = explain("guided_backprop", model, inputs, targets, {}, cam_layer="6").values
    singles = torch.cat(
        [
            explain(
                "guided_backprop", model, inputs[i : i + 1], targets[i : i + 1], {}, cam_layer="6"
            ).values
            for i in range(3)
        ]
    )

    # Float64 maps ~1e-16 apart, each rounded to float32: at most 1 ulp ≤ eps32 · |value| apart.
    assert max_relative_deviation(batch, singles) <= float32_rounding(singles, 1)
    assert not torch.allclose(batch[0], batch[1])


def test_leaves_the_model_and_the_inputs_alone() -> None:
    model = small_cnn()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = torch.randn(2, 3, 16, 16).double()
    original = inputs.clone()

    explain("guided_backprop", model, inputs, torch.tensor([0, 1]), {}, cam_layer="6")

    assert_untouched(model)
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert torch.equal(inputs, original)
    assert not inputs.requires_grad
    # The plain gradient is still the plain gradient: no guided ReLU leaked into the model.
    plain = input_gradient(model, inputs, torch.tensor([0, 1]))
    assert max_relative_deviation(plain, captum_guided(model, inputs, torch.tensor([0, 1]))) > 0.1


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
