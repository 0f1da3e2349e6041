"""Grad-CAM against Captum's LayerGradCam and Captum's own hand-checked case; its refusals of
layers it cannot use, and its hooks removed on every exit path."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from method_checks import DEVICES, assert_untouched, float32_rounding, max_relative_deviation
from method_models import DEMO_MODEL, small_cnn
from method_models import calibrated_resnet18 as build_calibrated_resnet18
from torch import nn
from typing_extensions import override

from workers.demo.data import make_sample, to_png_bytes
from workers.images import decode_image, to_model_input
from workers.methods import MethodParameterError, TargetError, explain
from workers.repository import load_model


@pytest.fixture(scope="module")
def calibrated_resnet18() -> nn.Module:
    return build_calibrated_resnet18()


def captum_gradcam(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    attribution = LayerGradCam(model, layer).attribute(
        inputs, target=targets.tolist(), relu_attributions=True
    )
    upsampled = LayerAttribution.interpolate(
        attribution, tuple(inputs.shape[2:]), interpolate_mode="bilinear"
    )
    return upsampled[:, 0].detach()


@pytest.mark.parametrize("layer", ["6", "5", "2"])
def test_matches_captum_on_a_small_cnn(layer: str) -> None:
    model = small_cnn()
    inputs = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 2, 1, 4])

    result = explain("gradcam", model, inputs, targets, {}, cam_layer=layer)

    expected = captum_gradcam(model, model.get_submodule(layer), inputs, targets)
    assert result.values.shape == (4, 20, 20)
    assert result.values.dtype == torch.float32
    assert not result.signed
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_matches_captum_on_resnet18(layer: str, calibrated_resnet18: nn.Module) -> None:
    model = calibrated_resnet18
    inputs = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([7, 412, 999])

    result = explain("gradcam", model, inputs, targets, {}, cam_layer=layer)

    expected = captum_gradcam(model, model.get_submodule(layer), inputs, targets)
    assert result.values.shape == (3, 64, 64)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-14 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(model)


def test_matches_captum_on_the_demo_model() -> None:
    model = load_model(DEMO_MODEL, torch.device("cpu"))
    # In float64, like the other comparisons: no ReLU is decided by rounding.
    module = model.module.double()
    samples = [make_sample(seed) for seed in (1, 2, 3, 4)]
    inputs = to_model_input(
        [decode_image(to_png_bytes(sample.image)) for sample in samples], model.manifest.input
    ).double()
    targets = torch.tensor([0, 1, 2, 1])
    layer = model.default_cam_layer

    result = explain("gradcam", module, inputs, targets, {}, cam_layer=layer)

    expected = captum_gradcam(module, module.get_submodule(layer), inputs, targets)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-15 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(module)


# Captum's tests/attr/layer/test_grad_cam.py (not shipped in the wheel) expects these layer maps
# for BasicModel_ConvNet_One_Conv on arange(16) with target 0; they also follow by hand: conv1
# gives [-5, 4, 31, 40] and [-30, -21, 6, 15], the gradients through relu1 and fc1 average to
# channel weights 0.75 and -0.5 at conv1 (1 and -0.5 at relu1), and the weighted sums are these.
@pytest.mark.parametrize(
    ("layer", "layer_map"),
    [("conv1", [[11.25, 13.5], [20.25, 22.5]]), ("relu1", [[0.0, 4.0], [28.0, 32.5]])],
)
def test_reproduces_captums_simple_conv_case(layer: str, layer_map: list[list[float]]) -> None:
    model = BasicModel_ConvNet_One_Conv().eval().requires_grad_(False)
    inputs = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)

    result = explain("gradcam", model, inputs, torch.tensor([0]), {}, cam_layer=layer)

    expected = F.interpolate(
        torch.tensor([[layer_map]]), size=(4, 4), mode="bilinear", align_corners=False
    )[:, 0]
    # Every value on the way (inputs, weights, sums, the mean gradient, the bilinear weights and
    # sums) is an integer or a multiple of 1/16 below 2¹⁰: float32 holds each exactly, whatever
    # the order of the sums, so the map is the hand result exactly.
    torch.testing.assert_close(result.values, expected, rtol=0.0, atol=0.0)


def test_the_layer_parameter_overrides_the_cam_layer() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)).double()
    targets = torch.tensor([1, 2])

    result = explain("gradcam", model, inputs, targets, {"layer": "2"}, cam_layer="6")

    expected = captum_gradcam(model, model.get_submodule("2"), inputs, targets)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)


def test_an_inplace_relu_after_the_layer_does_not_change_the_map() -> None:
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    targets = torch.tensor([2, 0])

    inplace = explain("gradcam", small_cnn(inplace=True), inputs, targets, {}, cam_layer="5")

    reference = small_cnn(inplace=False)
    expected = captum_gradcam(reference, reference.get_submodule("5"), inputs, targets)
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(inplace.values, expected) <= float32_rounding(expected, 1)


class Failing(nn.Module):
    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_removes_its_hook_when_the_forward_pass_fails() -> None:
    model = nn.Sequential(small_cnn(), Failing())

    with pytest.raises(RuntimeError, match="boom"):
        explain(
            "gradcam",
            model,
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {},
            cam_layer="0.6",
        )

    assert_untouched(model)


def test_removes_its_hook_when_a_target_is_out_of_range() -> None:
    model = small_cnn()

    with pytest.raises(TargetError):
        explain(
            "gradcam",
            model,
            torch.randn(2, 3, 8, 8).double(),
            torch.tensor([0, 5]),
            {},
            cam_layer="6",
        )

    assert_untouched(model)


def test_rejects_a_layer_the_model_does_not_have() -> None:
    with pytest.raises(MethodParameterError, match="no_such") as caught:
        explain(
            "gradcam",
            small_cnn(),
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {},
            cam_layer="no_such",
        )
    assert caught.value.parameter == "layer"


def test_rejects_a_layer_without_a_spatial_output() -> None:
    model = small_cnn()

    with pytest.raises(MethodParameterError, match="'9'") as caught:
        explain(
            "gradcam",
            model,
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {"layer": "9"},
            cam_layer="6",
        )

    assert caught.value.parameter == "layer"
    assert_untouched(model)


def test_rejects_a_layer_that_runs_twice() -> None:
    relu = nn.ReLU()
    model = (
        nn.Sequential(
            nn.Conv2d(1, 2, 3),
            relu,
            nn.Conv2d(2, 2, 3),
            relu,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        .eval()
        .requires_grad_(False)
    )

    with pytest.raises(MethodParameterError, match="2 times"):
        explain("gradcam", model, torch.randn(1, 1, 8, 8), torch.tensor([0]), {}, cam_layer="1")

    assert_untouched(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("gradcam", model, inputs, targets, {}, cam_layer="6").values
    on_device = explain(
        "gradcam", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="6"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): float64 maps ~1e-15 apart, each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
