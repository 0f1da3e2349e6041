"""CAM against Grad-CAM at the pooled features (equal up to h·w on GAP + linear models), against
the formula written out on DenseNet, and its refusal of models without such a head."""

from collections.abc import Callable

import onnx
import pytest
import torch
import torch.nn.functional as F
from method_checks import DEVICES, assert_untouched, float32_rounding, max_relative_deviation
from method_models import DEMO_MODEL, DataDependent, calibrated, calibrated_resnet18, frozen
from torch import nn
from torchvision.models import DenseNet

from workers import onnx_models
from workers.demo.data import make_dataset
from workers.methods import available_methods, explain
from workers.methods.base import TargetError, UnsupportedModelError
from workers.repository import load_model


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return calibrated_resnet18()


@pytest.fixture(scope="module")
def demo_model() -> nn.Module:
    """The shipped model in float64, for the same reason as `method_models`' models."""
    return load_model(DEMO_MODEL, torch.device("cpu")).module.double()


def dropout_head_cnn() -> nn.Sequential:
    """Conv–BN–ReLU blocks, then a global average pool, a flatten, a dropout and a linear layer,
    whose head is still GAP + linear in eval mode; in float64 (see `method_models`)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.empty(module.num_features).uniform_(-0.5, 0.5)
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
    return model.double().eval().requires_grad_(False)


def test_equals_gradcam_times_the_map_area_on_the_demo_model(demo_model: nn.Module) -> None:
    images, labels, _ = make_dataset(3, seed=5_000_000)
    inputs = ((torch.from_numpy(images)[:, None] - 0.5) / 0.25).double()
    # Each image's own class and the next: both with evidence somewhere in these images.
    inputs = torch.cat([inputs, inputs])
    targets = torch.cat([torch.from_numpy(labels), (torch.from_numpy(labels) + 1) % 3])

    cam = explain("cam", demo_model, inputs, targets, {}, cam_layer="features.14")
    gradcam = explain("gradcam", demo_model, inputs, targets, {}, cam_layer="features.14")

    assert cam.values.shape == (6, 128, 128)
    assert cam.values.dtype == torch.float32
    assert not cam.signed
    # features.14 gives 16×16 maps, whose spatial mean the head's weights see. Both in float64,
    # the scaling exact: two float32 roundings of values ~1e-16 apart, ≤ 1 ulp ≤ eps32 · |value|.
    expected = 16 * 16 * gradcam.values.double()
    assert max_relative_deviation(cam.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(demo_model)


def test_equals_gradcam_times_the_map_area_on_resnet18(resnet18: nn.Module) -> None:
    model = resnet18
    inputs = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([7, 412, 999])

    cam = explain("cam", model, inputs, targets, {}, cam_layer="layer4")
    gradcam = explain("gradcam", model, inputs, targets, {}, cam_layer="layer4")

    # Both in float64, scaled in float64: two float32 roundings, ≤ 1 ulp ≤ eps32 · |value|.
    expected = 3 * 3 * gradcam.values.double()
    assert max_relative_deviation(cam.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(model)


def test_matches_the_formula_on_a_densenet() -> None:
    torch.manual_seed(0)
    # torchvision's DenseNet (densenet121's class, made small) pools functionally: relu and
    # adaptive_avg_pool2d in its forward, no pool module.
    model = frozen(
        calibrated(DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16), 64)
    )
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).double()
    # Decided once, for both sides: whichever class wins, the maps below are of the same one.
    targets = model(inputs).argmax(dim=1)

    result = explain("cam", model, inputs, targets, {}, cam_layer="features")

    features = torch.relu(model.features(inputs))
    weights = model.classifier.weight[targets][:, :, None, None]
    expected = F.interpolate(
        torch.relu((weights * features).sum(1, keepdim=True)), size=(64, 64), mode="bilinear"
    )[:, 0]
    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)
    assert_untouched(model)


def test_the_onnx_conversion_of_the_demo_model_gives_the_same_maps(
    demo_model: nn.Module,
) -> None:
    converted = onnx_models.convert_to_torch(onnx.load(DEMO_MODEL / "model.onnx"))
    # In float64 like `demo_model`: the conversion keeps the same float32 weights and operations
    # (no BatchNorm folded), and ONNX Runtime plays no part in CAM.
    converted = converted.double().eval().requires_grad_(False)
    inputs = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(4)).double()
    targets = torch.tensor([1, 2])

    from_onnx = explain("cam", converted, inputs, targets, {}, cam_layer="")
    native = explain("cam", demo_model, inputs, targets, {}, cam_layer="")

    assert "cam" in available_methods(converted)
    # Float64 maps ~1e-16 apart, each rounded to float32: at most 1 ulp ≤ eps32 · |value| apart.
    bound = float32_rounding(native.values, 1)
    assert max_relative_deviation(from_onnx.values, native.values) <= bound


class FlattenHead(nn.Module):
    """Conv features flattened straight into a linear layer: no pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def unsupported_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    features = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()]
    gap = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return {
        "no pool": FlattenHead(),
        "softmax after the linear layer": nn.Sequential(
            *features, *gap, nn.Linear(4, 3), nn.Softmax(dim=1)
        ),
        "two linear layers": nn.Sequential(*features, *gap, nn.Linear(4, 4), nn.Linear(4, 3)),
        "max pool": nn.Sequential(
            *features, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        ),
        "2×2 average pool": nn.Sequential(
            *features, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
        ),
        "untraceable": DataDependent(),
    }


@pytest.mark.parametrize("kind", list(unsupported_models()))
def test_refuses_models_without_a_gap_linear_head(kind: str) -> None:
    model = unsupported_models()[kind].eval().requires_grad_(False)

    assert "cam" not in available_methods(model)
    assert "gradcam" in available_methods(model)
    with pytest.raises(UnsupportedModelError, match="global-average-pool \\+ linear"):
        explain("cam", model, torch.randn(1, 3, 8, 8), torch.tensor([0]), {}, cam_layer="0")
    assert_untouched(model)


class MeanPooled(nn.Module):
    """Features averaged by a mean over the spatial dims in the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tuple_pooled() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.mark.parametrize(
    ("build", "pooled_layer"), [(MeanPooled, "features.1"), (tuple_pooled, "1")]
)
def test_supports_other_spellings_of_the_pool(
    build: Callable[[], nn.Module], pooled_layer: str
) -> None:
    torch.manual_seed(0)
    model = build().double().eval().requires_grad_(False)
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([2, 0])

    result = explain("cam", model, inputs, targets, {}, cam_layer="")

    gradcam = explain("gradcam", model, inputs, targets, {}, cam_layer=pooled_layer)
    assert "cam" in available_methods(model)
    # Both in float64, the scaling exact: two float32 roundings, ≤ 1 ulp ≤ eps32 · |value|.
    expected = 8 * 8 * gradcam.values.double()
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 1)


def test_rejects_a_target_the_head_does_not_have() -> None:
    model = dropout_head_cnn()

    with pytest.raises(TargetError):
        explain(
            "cam", model, torch.randn(2, 3, 8, 8).double(), torch.tensor([0, 5]), {}, cam_layer="4"
        )
    assert_untouched(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = dropout_head_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([4, 0, 2])

    on_cpu = explain("cam", model, inputs, targets, {}, cam_layer="4").values
    on_device = explain(
        "cam", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="4"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): float64 maps ~1e-15 apart, each rounded to float32, ≤ 1 ulp.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 1)
