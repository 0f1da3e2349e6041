"""DeepLIFT: completeness on ResNet-50 and DenseNet-121, Captum's DeepLift where its rules hold,
and Captum's hand-computed cases."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.testing.helpers.basic_models import ReLUDeepLiftModel, ReLULinearModel
from method_checks import DEVICES, EPS32, assert_untouched, float32_rounding, max_relative_deviation
from method_models import DEMO_MODEL, calibrated, frozen, residual_net
from torch import nn
from torch.nn import functional as F
from torchvision.models import densenet121, resnet50

from workers.demo.data import make_sample
from workers.methods import Normalisation, explain
from workers.methods import deeplift as deeplift_module
from workers.methods.baselines import make_baseline
from workers.methods.canonical import canonical_form
from workers.methods.deeplift import EPSILON
from workers.repository import load_model

# The models are in float64 (`method_models.frozen`) so that nothing the rules decide from a float
# (the Rescale rule's |Δin| < EPSILON branch, max-pool winners) can be decided by rounding, which
# differs between this method and Captum or two devices: two such maps then agree to their
# rounding to float32. `decision_margins` checks that every decision has room to spare.


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


def calibrated_float64(factory: Callable[..., nn.Module]) -> nn.Module:
    """A random-weight torchvision model whose BatchNorm statistics come from one batch of random
    data; in float64, which on a CPU takes no longer than float32 at this size."""
    torch.manual_seed(0)
    return frozen(calibrated(factory(weights=None), 64, passes=1, seed=0))


def target_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).gather(1, targets[:, None])[:, 0].double()


def decision_margins(
    model: nn.Module, inputs: torch.Tensor, baselines: torch.Tensor
) -> tuple[float, float]:
    """On the [x; x0] batch the rules see: the smallest |Δin| at any ReLU or max-pool input, and
    the smallest gap between the largest and the second largest value of any max-pool window.

    Where |Δin| ≫ EPSILON no rounding takes the gradient branch, and where the gap ≫ rounding
    no rounding picks another winner: then every decision is the same on two sides that compute
    the forward pass differently (a batch and its rows, two devices).
    """
    changes: list[float] = []
    gaps: list[float] = []

    def before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x, x0 = args[0].detach().chunk(2)
        changes.append(float((x - x0).abs().min()))
        if isinstance(module, nn.MaxPool2d):
            padding = module.padding if isinstance(module.padding, int) else module.padding[0]
            padded = F.pad(args[0].detach(), [padding] * 4, value=-torch.inf)
            windows = F.unfold(
                padded.flatten(0, 1)[:, None], module.kernel_size, stride=module.stride
            )
            top = windows.topk(2, dim=1).values
            gaps.append(float((top[:, 0] - top[:, 1]).min()))

    nonlinear = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    handles = [m.register_forward_pre_hook(before) for m in nonlinear]
    try:
        with torch.no_grad():
            model(torch.cat([inputs, baselines]))
    finally:
        for handle in handles:
            handle.remove()
    return min(changes), min(gaps, default=torch.inf)


def assert_decided_far_from_rounding(
    model: nn.Module, inputs: torch.Tensor, baselines: torch.Tensor
) -> None:
    """Every Rescale branch and max-pool winner is decided with room that float64 rounding
    (≲ 1e-13 on values of this size) cannot cross, so both maps follow the same decisions."""
    change, gap = decision_margins(model, inputs, baselines)
    assert change > 100 * EPSILON, f"a |Δin| of {change:.1e} is near the gradient branch"
    assert gap > 1e-9, f"a max-pool window is a near-tie, {gap:.1e}"


def both_sides(
    ours: Callable[[], torch.Tensor],
    captum_model: nn.Module,
    captum: Callable[[], torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This method's map and Captum's summed over channels, after checking that both fed every
    ReLU and max-pool, in order, the same [x; x0] batch, bit for bit.

    Both then decide every Rescale branch and every max-pool winner (near-ties from a constant
    baseline included) from the same numbers by the same rule, whatever the processor: what
    separates the maps is their float64 backward sums and their rounding to float32.
    """
    seen: dict[str, list[torch.Tensor]] = {"ours": [], "captum": []}
    for function in (
        deeplift_module._RescaleReLUFunction,
        deeplift_module._RescaleMaxPool2dFunction,
    ):
        original = function.forward

        def recording(
            ctx: object, inputs: torch.Tensor, *rest: object, _f: Callable = original
        ) -> object:
            seen["ours"].append(inputs.detach().clone())
            return _f(ctx, inputs, *rest)

        monkeypatch.setattr(function, "forward", staticmethod(recording))
    mine = ours()
    monkeypatch.undo()

    def before(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["captum"].append(args[0].detach().clone())

    nonlinear = [m for m in captum_model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    handles = [m.register_forward_pre_hook(before) for m in nonlinear]
    try:
        theirs = captum().detach().sum(1)
    finally:
        for handle in handles:
            handle.remove()
    # Captum's forward pass for its convergence check comes after the one it differentiates.
    assert len(seen["captum"]) >= len(seen["ours"]) > 0
    for a, b in zip(seen["ours"], seen["captum"], strict=False):
        assert torch.equal(a, b), "the two sides saw different numbers at a nonlinearity"
    return mine, theirs


def completeness_gaps(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, |Σ map - (f(x) - f(x0))| relative to |f(x) - f(x0)|, and the most the map's
    rounding to float32 can add to it.

    The model is in float64, so completeness holds before the float32 map to ~1e-13; rounding
    each of its values v to float32 moves the sum by up to eps32/2 · Σ |v|, and the float64 sum
    here adds nothing that counts. Bounded with a rounding to spare: eps32 · Σ |map| / |change|.
    Completeness holds whichever way a branch or a winner is decided (each rule hands on exactly
    Δout), so this needs no margin check.
    """
    result = explain(
        "deeplift", model, inputs, targets, {"baseline": baseline, "seed": seed}, cam_layer=""
    )
    baselines = make_baseline(baseline, inputs, seed=seed)
    logits = target_logits(model, torch.cat([inputs, baselines]), targets.repeat(2))
    change = logits[: len(inputs)] - logits[len(inputs) :]
    assert bool((change.abs() > 1e-3).all()), "the logit barely changes; the check would be empty"
    values = result.values.double()
    gaps = (values.sum(dim=(1, 2)) - change).abs() / change.abs()
    return gaps, EPS32 * values.abs().sum(dim=(1, 2)) / change.abs()


def assert_complete(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: str
) -> None:
    gaps, rounding = completeness_gaps(model, inputs, targets, baseline)
    assert bool((gaps <= rounding).all()), (baseline, gaps, rounding)


@pytest.mark.parametrize(
    ("factory", "baselines"), [(resnet50, ("black", "uniform")), (densenet121, ("blur",))]
)
def test_is_complete_on_torchvision_models(
    factory: Callable[..., nn.Module], baselines: tuple[str, ...]
) -> None:
    model = calibrated_float64(factory)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([3, 500])

    for baseline in baselines:
        assert_complete(model, inputs, targets, baseline)
    assert_untouched(model, frozen=True)


def test_captum_refuses_a_reused_relu_that_this_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    model = residual_net()
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2)).double()
    baselines = make_baseline("black", inputs)
    targets = torch.tensor([1, 3])

    with pytest.raises(RuntimeError, match="used more than once"):
        CaptumDeepLift(model).attribute(inputs, baselines, target=targets.tolist())
    # The canonical form calls one nn.ReLU per application, which Captum accepts.
    canonical = canonical_form(model)
    result, expected = both_sides(
        lambda: explain("deeplift", model, inputs, targets, {}, cam_layer="").values,
        canonical,
        lambda: CaptumDeepLift(canonical).attribute(inputs, baselines, target=targets.tolist()),
        monkeypatch,
    )
    # Both in float64 on the same decisions: the map's rounding to float32, and one to spare.
    assert max_relative_deviation(result, expected) <= float32_rounding(expected, 2)
    assert_complete(model, inputs, targets, "black")


@pytest.mark.parametrize("baseline", ["black", "blur", "mean", "uniform"])
def test_matches_captum_where_its_relu_and_maxpool_rules_apply(
    baseline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([0, 3, 1, 4])
    params = {"baseline": baseline}
    baselines = make_baseline(baseline, inputs, seed=0)

    result = explain("deeplift", model, inputs, targets, params, cam_layer="")
    ours, expected = both_sides(
        lambda: explain("deeplift", model, inputs, targets, params, cam_layer="").values,
        model,
        lambda: CaptumDeepLift(model).attribute(inputs, baselines, target=targets.tolist()),
        monkeypatch,
    )

    assert result.values.shape == (4, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed
    # Both in float64 on the same decisions: the map's rounding to float32, and one to spare.
    assert max_relative_deviation(ours, expected) <= float32_rounding(expected, 2)
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
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(8)).double()
    targets = torch.tensor([0, 1, 2])
    baselines = make_baseline("blur", inputs)

    _, delta = CaptumDeepLift(model).attribute(
        inputs, baselines, target=targets.tolist(), return_convergence_delta=True
    )

    change = target_logits(model, inputs, targets) - target_logits(model, baselines, targets)
    assert float((delta.double().abs() / change.abs()).max()) > 0.1
    assert_complete(model, inputs, targets, "blur")


def demo_images(count: int) -> torch.Tensor:
    pixels = np.stack([make_sample(seed).image for seed in range(count)])
    return ((torch.from_numpy(pixels)[:, None] - 0.5) / 0.25).double()


def test_on_the_demo_model_is_complete_where_captum_drops_the_maxpool_rule() -> None:
    # The demo model feeds each ReLU straight into a MaxPool2d. Captum's hooks then keep the
    # max-pool's plain gradient instead of its multiplier (see `captum_ready_cnn`), so its maps
    # do not add up to the change of the logit; this method's do.
    model = frozen(load_model(DEMO_MODEL, torch.device("cpu")).module)
    inputs = demo_images(3)
    targets = torch.tensor([0, 1, 2])
    baselines = make_baseline("black", inputs)

    captum, delta = CaptumDeepLift(model).attribute(
        inputs, baselines, target=targets.tolist(), return_convergence_delta=True
    )

    change = target_logits(model, inputs, targets) - target_logits(model, baselines, targets)
    assert float((delta.double().abs() / change.abs()).max()) > 1e-2
    assert_complete(model, inputs, targets, "black")
    # Still the same method: the maps differ only through the max-pools, by up to a fifth of the
    # map's range; not a rounding bound (in float64 rounding moves them by ~1e-7).
    result = explain("deeplift", model, inputs, targets, {}, cam_layer="")
    assert max_relative_deviation(result.values, captum.detach().sum(1)) < 0.2


def test_the_noise_baseline_follows_its_seed() -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([1, 2])

    def deeplift(seed: int) -> torch.Tensor:
        params = {"baseline": "uniform", "seed": seed}
        return explain("deeplift", model, inputs, targets, params, cam_layer="").values

    assert torch.equal(deeplift(1), deeplift(1))
    assert not torch.allclose(deeplift(1), deeplift(2))


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = captum_ready_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([4, 0, 2])
    params = {"baseline": "uniform", "seed": 3}

    on_cpu = explain("deeplift", model, inputs, targets, params, cam_layer="").values
    on_device = explain(
        "deeplift", model.to(device), inputs.to(device), targets.to(device), params, cam_layer=""
    )

    assert on_device.values.device.type == device
    assert_decided_far_from_rounding(model.cpu(), inputs, make_baseline("uniform", inputs, seed=3))
    # In float64 (no TF32 either) on the same decisions: the maps' rounding to float32, and one
    # to spare.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 2)


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
    image = torch.tensor(pixels, dtype=torch.float64).view(1, 1, 1, -1)
    # Pixel value 0 is the input itself with this normalisation: Captum's zero baselines.
    identity = Normalisation((0.0,), (1.0,))

    result = explain(
        "deeplift", wrapped, image, torch.tensor([0]), {}, cam_layer="", normalisation=identity
    )

    # Every value on the way is a small multiple of 1/4, exact in any float: no rounding at all.
    torch.testing.assert_close(result.values.view(-1), torch.tensor(expected), rtol=0, atol=0)
