"""DeepLIFT: completeness on ResNet-50 and DenseNet-121, Captum's DeepLift where its rules hold,
and model hygiene."""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.testing.helpers.basic_models import ReLUDeepLiftModel, ReLULinearModel
from method_checks import DEVICES, assert_untouched, max_relative_deviation
from torch import nn
from torchvision.models import densenet121, resnet50

from workers.demo.data import make_sample
from workers.methods import Normalisation, explain
from workers.methods.baselines import make_baseline
from workers.methods.canonical import canonical_form
from workers.repository import load_model

ROOT = Path(__file__).resolve().parents[2]


Model = TypeVar("Model", bound=nn.Module)


def frozen(model: Model) -> Model:
    return model.eval().requires_grad_(False)


def captum_ready_cnn() -> nn.Module:
    """ReLUs and a max-pool, each its own module and never adjacent to another nonlinearity.

    Captum keeps a module's multiplier only if the next layer is linear: its hooks record the
    gradient arriving at a module before the following nonlinearity's hook rewrites it.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.MaxPool2d(2),
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
    return frozen(model)


class ResidualNet(nn.Module):
    """Two residual blocks that share one nn.ReLU module, as torchvision's ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.conv1(x) + x)
        x = self.relu(self.conv2(x) + x)
        return self.head(x.mean(dim=(2, 3)))


def calibrated(factory: Callable[..., nn.Module]) -> nn.Module:
    """A random-weight torchvision model whose BatchNorm statistics come from random data."""
    torch.manual_seed(0)
    model = factory(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    return frozen(model)


def target_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).gather(1, targets[:, None])[:, 0].double()


def completeness_error(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: str, seed: int = 0
) -> float:
    """|sum of the map - (f(x) - f(x0))| relative to |f(x) - f(x0)|, worst sample."""
    result = explain(
        "deeplift", model, inputs, targets, {"baseline": baseline, "seed": seed}, cam_layer=""
    )
    baselines = make_baseline(baseline, inputs, seed=seed)
    logits = target_logits(model, torch.cat([inputs, baselines]), targets.repeat(2))
    change = logits[: len(inputs)] - logits[len(inputs) :]
    assert bool((change.abs() > 1e-3).all()), "the logit barely changes; the check would be empty"
    error = (result.values.double().sum(dim=(1, 2)) - change).abs() / change.abs()
    return float(error.max())


@pytest.mark.parametrize(
    ("factory", "baselines"), [(resnet50, ("black", "uniform")), (densenet121, ("blur",))]
)
def test_is_complete_on_torchvision_models(
    factory: Callable[..., nn.Module], baselines: tuple[str, ...]
) -> None:
    model = calibrated(factory)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([3, 500])

    for baseline in baselines:
        assert completeness_error(model, inputs, targets, baseline) < 1e-3, baseline
    assert_untouched(model, frozen=True)


def test_captum_refuses_a_reused_relu_that_this_handles() -> None:
    model = frozen(ResidualNet())
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    baselines = make_baseline("black", inputs)
    targets = torch.tensor([1, 3])

    with pytest.raises(RuntimeError, match="used more than once"):
        CaptumDeepLift(model).attribute(inputs, baselines, target=targets.tolist())
    result = explain("deeplift", model, inputs, targets, {}, cam_layer="")

    # The canonical form calls one nn.ReLU per application, which Captum accepts.
    expected = CaptumDeepLift(canonical_form(model)).attribute(
        inputs, baselines, target=targets.tolist()
    )
    assert max_relative_deviation(result.values, expected.detach().sum(1)) < 1e-4
    assert completeness_error(model, inputs, targets, "black") < 1e-4


@pytest.mark.parametrize("baseline", ["black", "blur", "mean", "uniform"])
def test_matches_captum_where_its_relu_and_maxpool_rules_apply(baseline: str) -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 3, 1, 4])

    result = explain("deeplift", model, inputs, targets, {"baseline": baseline}, cam_layer="")

    baselines = make_baseline(baseline, inputs, seed=0)
    expected = CaptumDeepLift(model).attribute(inputs, baselines, target=targets.tolist())
    assert result.values.shape == (4, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed
    assert max_relative_deviation(result.values, expected.detach().sum(1)) < 1e-4
    assert_untouched(model, frozen=True)


def test_stays_complete_on_overlapping_max_pools_where_captums_unpooling_is_not() -> None:
    # Same max-pool rule, but Captum hands the shares back with max_unpool2d, which keeps one
    # share where overlapping windows pick the same winner; this adds them up.
    torch.manual_seed(1)
    model = frozen(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
    )
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    targets = torch.tensor([0, 1, 2])
    baselines = make_baseline("blur", inputs)

    _, delta = CaptumDeepLift(model).attribute(
        inputs, baselines, target=targets.tolist(), return_convergence_delta=True
    )

    change = target_logits(model, inputs, targets) - target_logits(model, baselines, targets)
    assert float((delta.double().abs() / change.abs()).max()) > 0.1
    assert completeness_error(model, inputs, targets, "blur") < 1e-4


def demo_images(count: int) -> torch.Tensor:
    pixels = np.stack([make_sample(seed).image for seed in range(count)])
    return (torch.from_numpy(pixels)[:, None] - 0.5) / 0.25


def test_on_the_demo_model_is_complete_where_captum_drops_the_maxpool_rule() -> None:
    # The demo model feeds each ReLU straight into a MaxPool2d. Captum's hooks then keep the
    # max-pool's plain gradient instead of its multiplier (see `captum_ready_cnn`), so its maps
    # do not add up to the change of the logit; this method's do.
    model = load_model(ROOT / "models/demo-lesions/1", torch.device("cpu")).module
    inputs = demo_images(3)
    targets = torch.tensor([0, 1, 2])
    baselines = make_baseline("black", inputs)

    captum, delta = CaptumDeepLift(model).attribute(
        inputs, baselines, target=targets.tolist(), return_convergence_delta=True
    )

    change = target_logits(model, inputs, targets) - target_logits(model, baselines, targets)
    assert float((delta.double().abs() / change.abs()).max()) > 1e-2
    assert completeness_error(model, inputs, targets, "black") < 1e-4
    # Still the same method: the maps differ only through the max-pools.
    result = explain("deeplift", model, inputs, targets, {}, cam_layer="")
    assert max_relative_deviation(result.values, captum.detach().sum(1)) < 0.2


def test_a_batch_equals_single_image_calls() -> None:
    model = frozen(ResidualNet())
    images = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 2, 1])
    params = {"baseline": "uniform", "seed": 5}

    batch = explain("deeplift", model, inputs, targets, params, cam_layer="").values
    singles = torch.cat(
        [
            explain(
                "deeplift", model, inputs[i : i + 1], targets[i : i + 1], params, cam_layer=""
            ).values
            for i in range(3)
        ]
    )

    assert max_relative_deviation(batch, singles) < 1e-5
    assert not torch.allclose(batch[0], batch[1])


def test_the_noise_baseline_follows_its_seed() -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([1, 2])

    def deeplift(seed: int) -> torch.Tensor:
        params = {"baseline": "uniform", "seed": seed}
        return explain("deeplift", model, inputs, targets, params, cam_layer="").values

    assert torch.equal(deeplift(1), deeplift(1))
    assert not torch.allclose(deeplift(1), deeplift(2))


def test_leaves_the_model_and_the_inputs_alone() -> None:
    model = frozen(ResidualNet())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = torch.randn(2, 3, 12, 12)
    original = inputs.clone()

    explain("deeplift", model, inputs, torch.tensor([0, 1]), {}, cam_layer="")

    assert_untouched(model, frozen=True)
    assert model.relu.inplace and type(model.relu) is nn.ReLU
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert torch.equal(inputs, original)
    assert not inputs.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    targets = torch.tensor([4, 0, 2])
    params = {"baseline": "uniform", "seed": 3}

    on_cpu = explain("deeplift", model, inputs, targets, params, cam_layer="").values
    on_device = explain(
        "deeplift", model.to(device), inputs.to(device), targets.to(device), params, cam_layer=""
    )

    assert on_device.values.device.type == device
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) < 1e-4


class _PixelsAsInputs(nn.Module):
    """Feeds a (N, 1, 1, W) image's pixels, split in two, to a Captum test model of two inputs."""

    def __init__(self, model: nn.Module, split: int) -> None:
        super().__init__()
        self.model = model
        self.split = split

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.flatten(1)
        return self.model(pixels[:, : self.split], pixels[:, self.split :]).reshape(-1, 1)


@pytest.mark.parametrize(
    ("model", "split", "pixels", "expected"),
    [
        # Captum's test_relu_deeplift_exact_match: 2·relu(x1) + 2·relu(x2 − 1.5) at (1, 2).
        (ReLUDeepLiftModel(), 1, [1.0, 2.0], [2.0, 1.0]),
        # Captum's test_relu_linear_deeplift: l3(relu(cat(l1(x1), l2(x2)))).
        (ReLULinearModel(), 3, [-10.0, 1.0, -5.0, 3.0, 3.0, 1.0], [0.0, 0.0, 0.0, 6.0, 9.0, 0.0]),
    ],
)
def test_reproduces_captums_hard_coded_cases(
    model: nn.Module, split: int, pixels: list[float], expected: list[float]
) -> None:
    wrapped = frozen(_PixelsAsInputs(model, split))
    image = torch.tensor(pixels).view(1, 1, 1, -1)
    # Pixel value 0 is the input itself with this normalisation: Captum's zero baselines.
    identity = Normalisation((0.0,), (1.0,))

    result = explain(
        "deeplift", wrapped, image, torch.tensor([0]), {}, cam_layer="", normalisation=identity
    )

    torch.testing.assert_close(result.values.view(-1), torch.tensor(expected))
