"""LRP end to end: conservation, the ε-rule's identity with gradient × input, batches, hygiene.

References: with zero biases and ε → 0 the input relevance sums to the explained logit
(conservation, Montavon et al. 2019); on ReLU networks LRP-ε with ε → 0 on every layer equals
gradient × input (Ancona et al., ICLR 2018), here Captum's InputXGradient on the unmodified model.
Each holds only if BatchNorm folding, residual sums, concatenations and pooling are all right.
Models: the shipped demo model, torchvision's ResNet-50 and DenseNet-121 (random weights, BatchNorm
calibrated), each as a PyTorch module and through ONNX (export, then onnx2torch).
"""

import copy
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from captum.attr import InputXGradient
from method_checks import DEVICES, EPS32, assert_untouched
from method_models import DEMO_MODEL, calibrated, demo_model
from rounding_bounds_rules import max_pool_tie_gap
from torch import nn
from torchvision.models import densenet121, resnet50

from schemas.methods import PARAMS_BY_METHOD, method_catalogue
from schemas.methods.lrp import LrpParams
from workers.demo.model import build_lesion_net
from workers.methods import METHODS, explain, resolve_params
from workers.methods.canonical import canonical_form
from workers.methods.lrp import Lrp, lrp_relevance, relevance_graph
from workers.methods.lrp_rules import Composite
from workers.onnx_models import convert_to_torch

SIZE = 64
EPS64 = torch.finfo(torch.float64).eps


def calibrated_network(build: Callable[..., nn.Module]) -> nn.Module:
    """A torchvision network with random weights and BatchNorm statistics from random data."""
    torch.manual_seed(0)
    return calibrated(build(weights=None), 32, passes=2, batch=4)


def without_biases(model: nn.Module) -> nn.Module:
    """A copy whose layers add nothing: no bias, no BatchNorm shift (so folding adds none)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None
                module.running_mean.zero_()
                module.bias.zero_()
    return model


def through_onnx(model: nn.Module, channels: int, file: Path) -> nn.Module:
    """`model` exported to ONNX (TorchScript exporter, opset 17, dynamic batch), converted back."""
    torch.onnx.export(
        model,
        (torch.zeros(1, channels, SIZE, SIZE),),
        file,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    return convert_to_torch(onnx.load(file)).requires_grad_(False)


@pytest.fixture(scope="module")
def networks() -> dict[str, tuple[nn.Module, int]]:
    """Biased networks by name, with their input channels."""
    return {
        "demo": (demo_model(), 1),
        "resnet50": (calibrated_network(resnet50), 3),
        "densenet121": (calibrated_network(densenet121), 3),
    }


@pytest.fixture(scope="module")
def unbiased(
    networks: dict[str, tuple[nn.Module, int]], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], nn.Module]:
    """Zero-bias copies by (name, path): "torch" as built, "onnx" exported and converted."""
    found = {}
    for name, (model, channels) in networks.items():
        zero_bias = without_biases(model)
        found[name, "torch"] = zero_bias
        file = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        found[name, "onnx"] = through_onnx(zero_bias, channels, file)
    return found


def images(channels: int, count: int = 2, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """Normalised images: pixels in [0, 1], shifted and scaled as ImageNet models expect."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, channels, size, size, generator=generator)
    return (pixels - 0.45) / 0.25


def target_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).gather(1, targets[:, None])[:, 0]


def max_relative_deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest |actual - expected| per sample, relative to that sample's largest |expected|."""
    scale = expected.flatten(1).abs().amax(1)
    assert bool((scale > 0).all()), "a reference map is zero; the comparison would be empty"
    return float(((actual - expected).abs().flatten(1).amax(1) / scale).max())


NETWORKS = ["demo", "resnet50", "densenet121"]


def sample_count(name: str) -> int:
    return 2 if name == "demo" else 1  # the large networks take one image to keep the suite fast


@pytest.mark.parametrize("path", ["torch", "onnx"])
@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(
    ("composite", "first_layer"), [("epsilon", "same"), ("epsilon_plus", "zbox")]
)
def test_relevance_sums_to_the_target_logit_without_biases(  # noqa: PLR0913 - 2 fixtures, 4 params
    unbiased: dict[tuple[str, str], nn.Module],
    networks: dict[str, tuple[nn.Module, int]],
    name: str,
    path: str,
    composite: str,
    first_layer: str,
) -> None:
    model = unbiased[name, path]
    inputs = images(networks[name][1], count=sample_count(name), seed=1)
    targets = torch.tensor([0, 2][: len(inputs)])

    relevance = lrp_relevance(
        model,
        inputs,
        targets,
        LrpParams.model_validate(
            {"composite": composite, "first_layer": first_layer, "epsilon": 1e-9}
        ),
    )

    logits = target_logits(model, inputs, targets)
    assert bool((logits.abs() > 1e-3).all())
    errors = (relevance.double().sum(dim=(1, 2, 3)) - logits.double()).abs() / logits.abs()
    # In float32, as served. Each rule layer hands on its relevance with float32 sums, so the
    # total drifts by ≲ eps32 per layer of the magnitudes summed, Σ|R| (the same at every layer
    # for z⁺, where every term is positive); ε = 1e-9 absorbs ~ε/|z| of a unit's relevance,
    # ~1e-9 here, well below. A wrong rule, sum or fold loses a percent or more.
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    magnitude = relevance.double().abs().sum(dim=(1, 2, 3)) / logits.abs()
    assert bool((errors <= layers * EPS32 * magnitude).all()), (errors, layers, magnitude)


# In float64: in float32 the rounding of BatchNorm folding flips ReLUs whose input is within
# ~1e-7 of zero, and in a deep network such flips move the gradient itself by a few percent.
@pytest.mark.parametrize("name", NETWORKS)
def test_epsilon_rule_equals_input_times_gradient_with_biases(
    networks: dict[str, tuple[nn.Module, int]], name: str
) -> None:
    model, channels = networks[name]
    model = copy.deepcopy(model).double()
    inputs = images(channels, count=sample_count(name), seed=2, size=32).double()
    targets = torch.tensor([1, 0][: len(inputs)])

    relevance = lrp_relevance(
        model, inputs, targets, LrpParams(composite="epsilon", first_layer="same", epsilon=1e-15)
    )

    expected = InputXGradient(model).attribute(inputs, target=targets.tolist()).detach()
    assert max_relative_deviation(relevance, expected) < 1e-9


def test_epsilon_rule_equals_input_times_gradient_on_the_shipped_onnx_model() -> None:
    model = convert_to_torch(onnx.load(DEMO_MODEL / "model.onnx")).requires_grad_(False).double()
    inputs = images(1, count=2, seed=3, size=32).double()
    targets = torch.tensor([2, 1])

    relevance = lrp_relevance(
        model, inputs, targets, LrpParams(composite="epsilon", first_layer="same", epsilon=1e-15)
    )

    expected = InputXGradient(model).attribute(inputs, target=targets.tolist()).detach()
    assert max_relative_deviation(relevance, expected) < 1e-9


def test_batch_norm_is_folded_and_every_sum_and_layer_gets_its_rule(
    networks: dict[str, tuple[nn.Module, int]],
) -> None:
    model = networks["resnet50"][0]

    graph = relevance_graph(model)

    kinds = [type(module) for module in graph.modules()]
    assert nn.BatchNorm2d not in kinds
    assert kinds.count(nn.Conv2d) == 53
    assert any(isinstance(module, nn.BatchNorm2d) for module in canonical_form(model).modules())
    assert relevance_graph(model) is graph


@pytest.mark.parametrize(
    ("composite", "first_layer"),
    [("epsilon_plus", "zbox"), ("alpha_beta", "flat"), ("epsilon", "same")],
)
def test_a_batch_with_per_sample_targets_equals_single_calls(
    networks: dict[str, tuple[nn.Module, int]], composite: str, first_layer: str
) -> None:
    # In float64, where no rounding of a batch against its rows can pick another max-pool winner.
    model = copy.deepcopy(networks["demo"][0]).double()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pictures = images(1, count=2, seed=4, size=32).double()
    inputs = torch.stack([pictures[0], pictures[0], pictures[1]])
    targets = torch.tensor([0, 2, 1])
    params = {"composite": composite, "first_layer": first_layer, "epsilon": 0.01}

    batch = explain("lrp", model, inputs, targets, params, cam_layer="features.14")
    singles = torch.cat(
        [
            explain(
                "lrp", model, inputs[i : i + 1], targets[i : i + 1], params, cam_layer="x"
            ).values
            for i in range(3)
        ]
    )

    assert batch.signed
    assert batch.values.shape == (3, 32, 32)
    assert batch.values.dtype == torch.float32
    assert max_pool_tie_gap(model, inputs) > 1e-9, "a max-pool near-tie; rounding picks its winner"
    # Float64 sums (~1e-13) and then each map's rounding to float32, eps32/2 of the largest
    # value: eps32 relative to it, and a rounding to spare.
    assert max_relative_deviation(batch.values, singles) <= 2 * EPS32
    assert not torch.allclose(batch.values[0], batch.values[1])
    assert_untouched(model, frozen=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_leaves_a_resnet_and_its_canonical_form_unchanged(
    networks: dict[str, tuple[nn.Module, int]],
) -> None:
    model = networks["resnet50"][0]
    canonical = canonical_form(model)
    modules = dict(canonical.named_modules())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = images(3, count=1, size=32)

    lrp_relevance(model, inputs, torch.tensor([3]))

    assert_untouched(model, frozen=True)
    assert canonical_form(model) is canonical
    assert dict(canonical.named_modules()) == modules
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert not inputs.requires_grad


def test_z_box_uses_the_given_bounds() -> None:
    """On a one-layer model, the z-box relevance of the target logit, by its formula."""
    torch.manual_seed(6)
    linear = nn.Linear(12, 3).double()
    model = nn.Sequential(nn.Flatten(), linear).eval().requires_grad_(False)
    low = torch.tensor([-2.0, -1.0, -1.5], dtype=torch.float64)[:, None, None]
    high = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)[:, None, None]
    inputs = low + (high - low) * torch.rand(2, 3, 2, 2, dtype=torch.float64)
    targets = torch.tensor([2, 0])

    relevance = lrp_relevance(
        model, inputs, targets, LrpParams(epsilon=0.0), input_bounds=(low, high)
    )

    w = linear.weight[targets]
    lo, hi = low.expand(3, 2, 2).flatten(), high.expand(3, 2, 2).flatten()
    contributions = inputs.flatten(1) * w - lo * w.clamp(min=0) - hi * w.clamp(max=0)
    logit = target_logits(model, inputs, targets)
    expected = contributions * (logit / contributions.sum(1))[:, None]
    # In float64: both sides sum the 12 terms and scale them, ≲ 16 roundings of eps64 each of
    # the largest term times the scale; a wrong bound or sign is off by whole terms.
    scale = (logit / contributions.sum(1)).abs()[:, None]
    bound = 16 * EPS64 * float((contributions.abs().amax(1, keepdim=True) * scale).max())
    torch.testing.assert_close(relevance.flatten(1), expected, rtol=0, atol=bound)


def test_alpha_beta_with_alpha_one_is_epsilon_plus() -> None:
    model = demo_model()
    inputs = images(1, count=2, seed=5)
    targets = torch.tensor([1, 2])

    plus = lrp_relevance(model, inputs, targets, LrpParams(composite="epsilon_plus"))
    alpha_one = lrp_relevance(model, inputs, targets, LrpParams(composite="alpha_beta", alpha=1.0))
    alpha_two = lrp_relevance(model, inputs, targets, LrpParams(composite="alpha_beta", alpha=2.0))

    # The two composites give every layer the same rule, so they run the same arithmetic on
    # the same numbers: equal to the bit on any processor.
    conv, dense = nn.Conv2d(1, 1, 1), nn.Linear(1, 1)
    epsilon_plus = Composite("epsilon_plus", "same", 1e-6)
    alpha_beta = Composite("alpha_beta", "same", 1e-6, alpha=1.0)
    for layer in (conv, dense):
        rule = epsilon_plus.rule_for(layer, input_layer=False)
        assert alpha_beta.rule_for(layer, input_layer=False) == rule
    torch.testing.assert_close(alpha_one, plus, rtol=0, atol=0)
    assert max_relative_deviation(alpha_two, plus) > 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    torch.manual_seed(7)
    model = build_lesion_net(num_classes=3, width=4).double().eval().requires_grad_(False)
    inputs = images(1, count=2, seed=6).double()
    targets = torch.tensor([0, 1])

    on_cpu = explain("lrp", model, inputs, targets, {}, cam_layer="x").values
    on_device = explain(
        "lrp", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="x"
    )

    assert on_device.values.device.type == device
    assert max_pool_tie_gap(model.cpu(), inputs) > 1e-9, "a max-pool near-tie"
    # In float64 (no TF32 either), with every max-pool winner clear: each map's rounding to
    # float32, and a rounding to spare.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= 2 * EPS32


def test_is_registered_with_its_schema_defaults() -> None:
    assert isinstance(METHODS["lrp"], Lrp)
    assert "lrp" in PARAMS_BY_METHOD
    assert "lrp" in {spec.id for spec in method_catalogue()}
    assert resolve_params("lrp", {}, cam_layer="x") == {
        "composite": "epsilon_plus",
        "first_layer": "zbox",
        "epsilon": 1e-6,
        "alpha": 2.0,
    }


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.linear(x)
        return -self.linear(x)


def test_supports_traceable_models_with_layers_only() -> None:
    lrp = Lrp()
    assert lrp.supports(demo_model())
    assert not lrp.supports(Branching())
    assert not lrp.supports(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(ValueError, match="Conv2d or Linear"):
        lrp_relevance(nn.Sequential(nn.Flatten()), torch.randn(1, 1, 2, 2), torch.tensor([0]))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Identity, nn.MaxPool2d])
def test_sparing_the_terms_of_negative_inputs_changes_nothing(activation: type[nn.Module]) -> None:
    """Terms of negative inputs are skipped after ReLUs only: an opaque identity between two
    convolutions, which forces them to be computed, gives the same relevance."""

    def network(opaque: bool) -> nn.Module:
        torch.manual_seed(8)
        middle = activation(2) if activation is nn.MaxPool2d else activation()
        # Hardtanh over ±1e9 is the identity here, but not an operation known to keep signs.
        between = [middle, nn.Hardtanh(-1e9, 1e9)] if opaque else [middle]
        layers = [nn.Conv2d(2, 4, 3), *between, nn.Conv2d(4, 3, 3), nn.Flatten(), nn.LazyLinear(2)]
        model = nn.Sequential(*layers)
        model(torch.zeros(1, 2, 12, 12))
        return model.eval().requires_grad_(False)

    inputs = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(9)).double()
    targets = torch.tensor([0, 1])
    known, opaque = (
        lrp_relevance(
            network(flag).double(),
            inputs,
            targets,
            LrpParams(composite="epsilon_plus", first_layer="same"),
        )
        for flag in (False, True)
    )

    # In float64 the two differ only by the order of sums over ≤ 192 terms in 3 layers,
    # ≲ 192 · 3 · eps64 of the largest value; a term wrongly spared moves it by ~1e-2.
    bound = 192 * 3 * EPS64 * float(known.abs().max())
    torch.testing.assert_close(known, opaque, rtol=0, atol=bound)
