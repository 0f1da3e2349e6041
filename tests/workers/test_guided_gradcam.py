"""Guided Grad-CAM against Captum's GuidedGradCam and Captum's hand-checked case."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from method_checks import DEVICES, assert_untouched, float32_rounding, max_relative_deviation
from method_models import calibrated_resnet18, small_cnn
from torch import nn

from workers.methods import MethodParameterError, explain
from workers.methods.canonical import canonical_form
from workers.methods.guided_backprop import guided_gradient

# What separates the method's maps from a reference's, or two devices', is the method's float32
# arithmetic on float64 maps (see `method_models`): the guided map and Grad-CAM each rounded to
# float32 and their product rounded, three roundings of eps32/2 relative to each value.


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return calibrated_resnet18(size=32, passes=2)


def captum_guided_gradcam(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Captum's per-channel product, reduced as the service reduces it: max over channels of |·|."""
    attribution = CaptumGuidedGradCam(model, layer).attribute(
        inputs, target=targets.tolist(), interpolate_mode="bilinear"
    )
    return attribution.detach().abs().amax(1)


@pytest.mark.parametrize("layer", ["6", "5", "2"])
def test_matches_captum_on_a_small_cnn(layer: str) -> None:
    model = small_cnn()
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    # Classes whose Grad-CAM is not all zero at these layers, so the comparison has content.
    targets = torch.tensor([0, 2, 4, 2])

    result = explain("guided_gradcam", model, inputs, targets, {}, cam_layer=layer)

    expected = captum_guided_gradcam(model, model.get_submodule(layer), inputs, targets)
    assert result.values.shape == (4, 16, 16)
    assert result.values.dtype == torch.float32
    assert not result.signed
    # Three float32 roundings of eps32/2 relative to each value (see above): 1.5 eps32.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 2)
    assert_untouched(model)


def test_matches_captum_on_resnet18_through_its_canonical_form(resnet18: nn.Module) -> None:
    model = resnet18
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([7, 999])

    result = explain("guided_gradcam", model, inputs, targets, {}, cam_layer="layer4")

    # Captum's guided part needs one nn.ReLU per call, so it runs on the canonical form, where
    # layer4's output is the output of its last ReLU call.
    canonical = canonical_form(model)
    expected = captum_guided_gradcam(
        canonical, canonical.get_submodule("layer4.1.relu_1"), inputs, targets
    )
    # Three float32 roundings of eps32/2 relative to each value (see above): 1.5 eps32.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 2)
    assert_untouched(model)


def test_reproduces_captums_simple_conv_case() -> None:
    # Guided backprop gives G below (derived in test_guided_backprop); Grad-CAM at relu1 gives
    # [[0, 4], [28, 32.5]] (derived in test_gradcam). Captum's own test suite expects G times the
    # nearest-upsampled Grad-CAM; the service upsamples bilinearly, as Grad-CAM does.
    model = BasicModel_ConvNet_One_Conv().eval().requires_grad_(False)
    inputs = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    guided = torch.tensor([[0.0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]])
    layer_map = torch.tensor([[[[0.0, 4.0], [28.0, 32.5]]]])
    captums_expectation = torch.tensor(
        [
            [0.0, 0.0, 4.0, 4.0],
            [0.0, 0.0, 12.0, 8.0],
            [28.0, 84.0, 97.5, 65.0],
            [28.0, 56.0, 65.0, 32.5],
        ]
    )

    result = explain("guided_gradcam", model, inputs, torch.tensor([0]), {}, cam_layer="relu1")

    # Every value on the way is an integer or a multiple of 1/32 below 2¹⁰ (the bilinear weights
    # are quarters): float32 holds each exactly, whatever the order of the sums, so all is exact.
    exact = {"rtol": 0.0, "atol": 0.0}
    guided_map = guided_gradient(model, inputs, torch.tensor([0]))[0, 0]
    torch.testing.assert_close(guided_map, guided, **exact)
    nearest = F.interpolate(layer_map, size=(4, 4), mode="nearest")[0, 0]
    torch.testing.assert_close(guided * nearest, captums_expectation, **exact)
    bilinear = F.interpolate(layer_map, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result.values, guided * bilinear[:, 0], **exact)


def test_rejects_a_layer_the_model_does_not_have() -> None:
    model = small_cnn()

    with pytest.raises(MethodParameterError) as caught:
        explain(
            "guided_gradcam",
            model,
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {"layer": "no_such"},
            cam_layer="6",
        )

    assert caught.value.parameter == "layer"
    assert_untouched(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("guided_gradcam", model, inputs, targets, {}, cam_layer="6").values
    on_device = explain(
        "guided_gradcam", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="6"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either); each side 1.5 eps32 relative to each value (see above).
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 3)
