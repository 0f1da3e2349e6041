"""Grad-CAM++ against a hand-checked case and against the paper's formula evaluated with autograd's
own second and third derivatives of exp(score)."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from method_checks import DEVICES, EPS32, assert_untouched, float32_rounding, max_relative_deviation
from torch import nn
from torch.func import jvp, vmap

from workers.methods import MethodParameterError, explain


def small_cnn() -> nn.Sequential:
    """Conv–ReLU, strided Conv–BN–ReLU, global average pool, linear: the gradients at layer "1"
    vary from pixel to pixel, those at layer "4" do not; in float64.

    In float64 so that two ways of computing a map (the closed form and autograd's derivatives, a
    batch and its rows, two devices) agree to far below float32's precision, and no ReLU near its
    kink is decided differently by their roundings: what separates them is the map's rounding to
    float32.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.empty(module.num_features).uniform_(-0.5, 0.5)
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
    return model.double().eval().requires_grad_(False)


def paper_gradcam_pp(
    model: nn.Sequential, split: int, image: torch.Tensor, target: int
) -> torch.Tensor:
    """Eq. 19 of Chattopadhyay et al. for one image, with Y = exp(S) and its first, second and
    third derivatives at each activation taken by nested forward-mode autograd along that
    activation, not by the closed form; divided by exp(S), which scales every channel alike."""
    activation = model[:split](image)
    head = model[split:]

    def score(step: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return head(activation + step * direction)[0, target].exp()

    def derivative(
        function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def along(step: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
            return jvp(lambda s: function(s, direction), (step,), (torch.ones_like(step),))[1]

        return along

    first = derivative(score)
    second = derivative(first)
    third = derivative(second)
    size = activation.numel()
    directions = torch.eye(size, dtype=activation.dtype).view(size, *activation.shape)
    at_zero = torch.zeros((), dtype=activation.dtype)
    g1, g2, g3 = (
        vmap(order, in_dims=(None, 0))(at_zero, directions).view_as(activation)
        for order in (first, second, third)
    )
    denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
    weights = (alpha * torch.relu(g1)).sum(dim=(2, 3), keepdim=True)
    exp_score = head(activation)[0, target].exp()
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)) / exp_score
    return F.interpolate(cam, size=image.shape[2:], mode="bilinear", align_corners=False)[:, 0]


# Forward-mode autograd loads torch's own decompositions through the deprecated torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("layer", [1, 4])
def test_matches_the_published_formula_with_autograd_derivatives(layer: int) -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)).double()
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 2, 1])

    result = explain("gradcam_pp", model, inputs, targets, {}, cam_layer=str(layer))

    expected = torch.cat(
        [paper_gradcam_pp(model, layer + 1, inputs[i : i + 1], int(targets[i])) for i in range(3)]
    )
    assert result.values.shape == (3, 6, 6)
    assert result.values.dtype == torch.float32
    assert not result.signed
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value; float64's own
    # roundings, even amplified where α's denominator 2 + ΣA·g is small, stay far below the rest.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(model)


def test_a_hand_checked_case() -> None:
    # The layer is the input itself; the head is global average pool + linear, so the gradient
    # of logit c at channel k is W[c, k] / 4 everywhere on the 2×2 map.
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    linear = model[3]
    assert isinstance(linear, nn.Linear)
    linear.weight.data = torch.tensor([[2.0, 4.0], [-4.0, 1.0]])
    linear.bias.data.zero_()
    model.double().eval().requires_grad_(False)
    inputs = torch.tensor([[[[1.0, 2.0], [3.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]]).double()

    target0 = explain("gradcam_pp", model, inputs, torch.tensor([0]), {}, cam_layer="0")
    target1 = explain("gradcam_pp", model, inputs, torch.tensor([1]), {}, cam_layer="0")

    # Target 0: channel 0 has g = 0.5 and ΣA = 8, so α = 0.25 / (0.5 + 8 · 0.125) = 1/6 and
    # w = 4 · 1/6 · 0.5 = 1/3; channel 1 has g = 1 and ΣA = 2, so α = 1 / (2 + 2) and w = 1.
    expected0 = torch.tensor([[[1 / 3, 2 / 3 + 1], [1 + 1, 2 / 3]]], dtype=torch.float64)
    # In float64, the map's rounding to float32 is ≤ eps32/2 of each value, with room for the
    # few float64 roundings before it; the zeros below are exact (nothing of channel 0 counts).
    exact = {"rtol": EPS32, "atol": 0.0}
    torch.testing.assert_close(target0.values.double(), expected0, **exact)
    # Target 1: channel 0's gradient is negative, so only channel 1 counts: g = 0.25,
    # α = 0.0625 / (0.125 + 2 · 0.015625) = 0.4 and w = 4 · 0.4 · 0.25 = 0.4.
    expected1 = torch.tensor([[[0.0, 0.4], [0.4, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(target1.values.double(), expected1, **exact)


def test_rejects_a_layer_without_a_spatial_output() -> None:
    model = small_cnn()

    with pytest.raises(MethodParameterError, match="'6'") as caught:
        explain(
            "gradcam_pp",
            model,
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {},
            cam_layer="6",
        )

    assert caught.value.parameter == "layer"
    assert_untouched(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([1, 0, 2])

    on_cpu = explain("gradcam_pp", model, inputs, targets, {}, cam_layer="1").values
    on_device = explain(
        "gradcam_pp", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="1"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): float64 maps ~1e-15 apart, each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
