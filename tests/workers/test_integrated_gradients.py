"""Integrated Gradients against Captum's IntegratedGradients, the exact answer on a linear model,
and completeness on the demo model and a ResNet."""

import copy

import pytest
import torch
from captum.attr import IntegratedGradients
from method_checks import DEVICES, EPS32, assert_untouched, float32_rounding, max_relative_deviation
from method_models import calibrated
from method_models import demo_model as load_demo_model
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import workers.methods.base as method_base
from workers.demo.data import make_dataset
from workers.methods import AttributionMap, explain
from workers.methods.baselines import make_baseline


def small_cnn() -> nn.Sequential:
    """Conv–BN–ReLU, max-pool, Conv–ReLU, global average pool, linear; in float64.

    In float64 because near a flat baseline (black) the path's first points leave max-pool
    winners apart by ~1e-7, so float32 rounding, which differs between any two ways of computing
    the same map, picks them; in float64 the maps agree to their rounding to float32.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.empty(module.num_features).uniform_(-0.5, 0.5)
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
    return model.double().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def small_resnet() -> nn.Module:
    """torchvision's ResNet with one BasicBlock per stage (ResNet-18 has two), random weights and
    BatchNorm statistics taken from random data; its ReLU module is reused, in place."""
    torch.manual_seed(0)
    return calibrated(ResNet(BasicBlock, [1, 1, 1, 1]), 32)


@pytest.fixture(scope="module")
def demo_model() -> nn.Module:
    return load_demo_model()


def captum_integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 50,
) -> torch.Tensor:
    """Captum's trapezoid rule on `steps` intervals (`steps + 1` points), rescaled: Captum weighs
    its n points 1/n (halved at the ends), so its weights sum to (n − 1)/n, not 1; the rule
    itself, with weights 1/(n − 1), is its map times n/(n − 1)."""
    attributions = IntegratedGradients(model).attribute(
        inputs,
        baselines=baselines,
        target=targets.tolist(),
        n_steps=steps + 1,
        method="riemann_trapezoid",
    )
    return attributions.sum(dim=1).detach() * (steps + 1) / steps


def completeness_gaps(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, object]
) -> tuple[torch.Tensor, torch.Tensor, AttributionMap]:
    """Per sample, |Σ map − (f(x) − f(x0))| relative to |f(x) − f(x0)| for the target logit f,
    measured here; how far from the method's own gap the map's rounding to float32 can put it,
    eps32/2 · Σ |map| / |f(x) − f(x0)|; and the method's result."""
    result = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")
    baselines = make_baseline(str(params.get("baseline", "black")), inputs)
    with torch.no_grad():
        rows = torch.arange(len(targets))
        change = model(inputs)[rows, targets] - model(baselines)[rows, targets]
    assert bool((change.abs() > 0.1).all()), "little change to attribute; the check would be weak"
    # Summed in float64, as the method sums: so the float32 sum's rounding does not blur the gap.
    gaps = (result.values.double().sum(dim=(1, 2)) - change.double()).abs() / change.abs()
    rounding = EPS32 / 2 * result.values.double().abs().sum(dim=(1, 2)) / change.abs()
    return gaps, rounding, result


def test_matches_captum_on_a_small_cnn() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 3, 2])

    result = explain("integrated_gradients", model, inputs, targets, {}, cam_layer="")

    baselines = make_baseline("black", inputs)
    expected = torch.cat(
        [
            captum_integrated_gradients(
                model, inputs[i : i + 1], baselines[i : i + 1], targets[i : i + 1], int(steps)
            )
            for i, steps in enumerate(result.checks["steps"])
        ]
    )
    assert result.values.shape == (3, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed
    # Both in float64, Captum following the steps refinement chose: the map's rounding to
    # float32 (half an eps32 of the largest value), with a rounding to spare.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 2)
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model)


def test_matches_captum_on_a_resnet(small_resnet: nn.Module) -> None:
    model = copy.deepcopy(small_resnet).double()
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([7, 999])
    params = {"baseline": "blur", "steps": 20, "max_steps": 20}

    result = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")

    baselines = make_baseline("blur", inputs)
    expected = captum_integrated_gradients(model, inputs, baselines, targets, steps=20)
    # In float64, where no ReLU of the many on the path is near enough its kink to switch
    # between the two; what remains is the map's rounding to float32.
    assert max_relative_deviation(result.values, expected) <= float32_rounding(expected, 2)
    assert_untouched(model)


@pytest.mark.parametrize("baseline", ["black", "blur", "mean", "uniform"])
def test_equals_the_input_difference_times_the_weights_on_a_linear_model(baseline: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5, 3)).eval().requires_grad_(False)
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    inputs = torch.randn(2, 2, 4, 5)
    targets = torch.tensor([2, 0])
    params = {"steps": 2, "baseline": baseline, "seed": 1}

    result = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")

    difference = inputs - make_baseline(baseline, inputs, seed=1)
    expected = (difference * linear.weight[targets].view(2, 2, 4, 5)).sum(dim=1)
    torch.testing.assert_close(result.values, expected)


# Piecewise-linear networks give piecewise-constant gradients along the path, so the quadrature
# error falls slowly with the steps: at the default 50 the demo model's maps are each within a few
# percent (within 1 % on average, over 8 held-out images and every baseline).
def test_is_complete_within_one_percent_on_the_demo_model_at_the_defaults(
    demo_model: nn.Module,
) -> None:
    images, labels, _ = make_dataset(8, seed=5_000_000)
    inputs = (torch.from_numpy(images)[:, None] - 0.5) / 0.25
    targets = torch.from_numpy(labels)

    gaps, rounding, result = completeness_gaps(demo_model, inputs, targets, {})
    fixed, _, _ = completeness_gaps(demo_model, inputs, targets, {"max_steps": 50})

    assert float(gaps.max()) < 0.01, gaps
    # What refinement is for: 50 fixed steps leave some image above 1 %.
    assert float(fixed.max()) > 0.01, fixed
    assert bool((result.checks["steps"] > 50).any())
    # The reported gap is the one measured here, to the rounding of the map and of the gap.
    assert bool(((result.checks["completeness_gap"] - gaps).abs() <= rounding + EPS32 * gaps).all())
    assert_untouched(demo_model)


def test_refinement_brings_a_random_resnet_within_one_percent(small_resnet: nn.Module) -> None:
    # A random-weight ResNet's path is far rougher than a trained network's (thousands of ReLU
    # kinks along it): hence a higher `max_steps` than the default here.
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    gaps, _, result = completeness_gaps(
        small_resnet, inputs, torch.tensor([3, 600]), {"max_steps": 800}
    )

    assert float(gaps.max()) < 0.01, gaps
    assert bool((result.checks["steps"] > 50).all())


def test_refinement_stops_at_max_steps_and_reports_the_gap_it_reached(
    small_resnet: nn.Module,
) -> None:
    # In float64, so that the map is its channels' exact sum before its rounding to float32.
    model = copy.deepcopy(small_resnet).double()
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    params: dict[str, object] = {"steps": 8, "max_steps": 20, "tolerance": 0.0}

    gaps, rounding, result = completeness_gaps(model, inputs, torch.tensor([3, 600]), params)

    # 8 → 16; 32 would pass max_steps.
    assert result.checks["steps"].tolist() == [16.0, 16.0]
    assert bool(((result.checks["completeness_gap"] - gaps).abs() <= rounding + EPS32 * gaps).all())


def test_refinement_decides_each_images_steps_alone() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 2, 1])
    # Refinement runs per image: the images it revisits do not change the others' maps.
    params = {"steps": 8, "baseline": "uniform", "seed": 3, "tolerance": 0.01}

    batch = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")
    singles = [
        explain(
            "integrated_gradients",
            model,
            inputs[i : i + 1],
            targets[i : i + 1],
            params,
            cam_layer="",
        )
        for i in range(3)
    ]

    # The refinement decided the same steps for each image alone as in the batch ...
    assert batch.checks["steps"].tolist() == [float(single.checks["steps"]) for single in singles]
    assert len(set(batch.checks["steps"].tolist())) > 1, "no image refined; nothing was decided"
    # ... and, in float64, the maps then differ by at most one float32 rounding each.
    expected = torch.cat([single.values for single in singles])
    assert max_relative_deviation(batch.values, expected) <= float32_rounding(expected, 2)


@pytest.mark.parametrize("copies", [1, 3])
def test_the_pass_size_does_not_change_the_map(
    copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([4, 1])
    params = {"steps": 7, "max_steps": 7}
    in_one_pass = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")

    monkeypatch.setattr(method_base, "PASS_INPUT_ELEMENTS", copies * inputs.numel())
    in_passes = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")

    # In float64 only the maps' rounding to float32 can tell the passes apart.
    bound = float32_rounding(in_one_pass.values, 2)
    assert max_relative_deviation(in_passes.values, in_one_pass.values) <= bound


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([4, 0, 2])
    params = {"baseline": "uniform"}

    cpu_result = explain("integrated_gradients", model, inputs, targets, params, cam_layer="")
    on_cpu, on_cpu_steps = cpu_result.values, cpu_result.checks["steps"].tolist()
    on_device = explain(
        "integrated_gradients",
        model.to(device),
        inputs.to(device),
        targets.to(device),
        params,
        cam_layer="",
    )

    assert on_device.values.device.type == device
    assert on_device.checks["steps"].tolist() == on_cpu_steps
    # In float64 (no TF32 either): the two maps' rounding to float32.
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 2)


def test_the_convergence_figure_compares_the_map_with_the_one_on_half_the_steps() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([0, 3])
    baselines = make_baseline("black", inputs)

    result = explain(
        "integrated_gradients", model, inputs, targets, {"steps": 16, "max_steps": 16}, cam_layer=""
    )

    full = captum_integrated_gradients(model, inputs, baselines, targets, 16)
    half = captum_integrated_gradients(model, inputs, baselines, targets, 8)
    spans = full.flatten(1).amax(1) - full.flatten(1).amin(1)
    expected = (full - half).abs().flatten(1).amax(1) / spans
    assert bool((expected > 0.01).all()), "the maps agree already; the figure would be untested"
    # Computed in float64 and reported in float32: one rounding apart, plus float64's own.
    reported = result.checks["convergence"].double()
    assert bool(((reported - expected).abs() <= EPS32 * expected + 1e-12).all()), reported


def test_an_odd_step_count_that_is_never_doubled_has_no_convergence_figure() -> None:
    model = small_cnn()
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()

    result = explain(
        "integrated_gradients", model, inputs, torch.tensor([1]), {"steps": 7}, cam_layer=""
    )
    fixed = explain(
        "integrated_gradients",
        model,
        inputs,
        torch.tensor([1]),
        {"steps": 7, "max_steps": 7},
        cam_layer="",
    )

    # Refined (7 → 14 → …) it has one; at 7 steps alone it has none.
    assert int(result.checks["steps"][0]) > 7 and bool(result.checks["convergence"].isfinite()[0])
    assert bool(fixed.checks["convergence"].isnan()[0])


def test_a_small_gap_with_an_unconverged_map_is_refined() -> None:
    model = small_cnn()
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([0, 1, 2, 3])
    params: dict[str, object] = {"steps": 4, "tolerance": 0.01}

    fixed = explain(
        "integrated_gradients", model, inputs, targets, {**params, "max_steps": 4}, cam_layer=""
    )
    refined = explain(
        "integrated_gradients", model, inputs, targets, {**params, "max_steps": 8}, cam_layer=""
    )

    # Image 0 at 4 steps: complete to 0.04 %, yet its map moves by a quarter of its range.
    assert float(fixed.checks["completeness_gap"][0]) < 0.01 < float(fixed.checks["convergence"][0])
    assert float(refined.checks["steps"][0]) == 8


def test_a_map_left_above_tolerance_at_max_steps_carries_a_warning() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([0, 3])

    strict = explain(
        "integrated_gradients",
        model,
        inputs,
        targets,
        {"steps": 4, "max_steps": 8, "tolerance": 0.0},
        cam_layer="",
    )
    lenient = explain(
        "integrated_gradients", model, inputs, targets, {"tolerance": 1.0}, cam_layer=""
    )

    assert [w.kind if w else None for w in strict.warnings] == ["not_converged"] * 2
    assert strict.checks["steps"].tolist() == [8.0, 8.0]
    assert lenient.warnings == (None, None)
