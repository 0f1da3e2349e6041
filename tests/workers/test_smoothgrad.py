"""SmoothGrad against Captum's NoiseTunnel(Saliency) and Captum's attributions averaged over the
same noise draws, for each base method."""

from collections.abc import Callable, Mapping

import pytest
import torch
from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency
from method_checks import (
    DEVICES,
    EPS32,
    assert_untouched,
    float32_rounding,
    max_relative_deviation,
)
from method_models import small_cnn
from torch import nn

import workers.methods.base as method_base
from schemas.methods.smoothgrad import SmoothGradParams
from workers.methods import explain
from workers.methods.baselines import make_baseline


def same_noise(seed: int, samples: int, shape: torch.Size) -> torch.Tensor:
    """The standard normal draws SmoothGrad documents: one (C, H, W) draw per sample, in order,
    from a CPU generator seeded with `seed`, shared by every row of the batch."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=generator) for _ in range(samples)])


def sigma(noise: float, image: torch.Tensor) -> float:
    return noise * float(image.max() - image.min())


def result_unsigned(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: Mapping[str, object]
) -> torch.Tensor:
    """The mean of |map| over the noisy copies: what bounds the float32 sums of a signed mean."""
    unsigned = {**params, "abs": True}
    return explain("smoothgrad", model, inputs, targets, unsigned, cam_layer="").values


def captum_mean_over_noise(
    attribute: Callable[[torch.Tensor, int], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: SmoothGradParams,
) -> torch.Tensor:
    """For each row, the mean of a Captum attribution (C, H, W) over the same noisy copies as
    the method draws for `params`."""
    draws = same_noise(params.seed, params.samples, inputs.shape[1:]).double()
    return torch.stack(
        [
            torch.stack(
                [
                    attribute(
                        (image + sigma(params.noise, image) * draw)[None].requires_grad_(True),
                        int(target),
                    )[0].detach()
                    for draw in draws
                ]
            ).mean(dim=0)
            for image, target in zip(inputs, targets, strict=True)
        ]
    )


@pytest.mark.parametrize("absolute", [True, False])
def test_equals_captums_noise_tunnel_over_saliency_with_the_same_noise(
    absolute: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Grayscale, like the demo model: Captum's per-channel map is the map.
    model = small_cnn(channels=1)
    inputs = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([3, 1])
    params = {"samples": 20, "noise": 0.2, "seed": 7, "abs": absolute}

    result = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    draws = same_noise(7, 20, inputs.shape[1:]).double()
    # NoiseTunnel adds torch.normal(0, σ) for its 20 copies of one image; hand it our draws.
    monkeypatch.setattr(torch, "normal", lambda mean, std: mean + std * draws)
    tunnel = NoiseTunnel(Saliency(model))
    expected = torch.cat(
        [
            tunnel.attribute(
                inputs[i : i + 1],
                nt_type="smoothgrad",
                nt_samples=20,
                stdevs=sigma(0.2, inputs[i]),
                target=int(targets[i]),
                abs=absolute,
            )[:, 0]
            for i in range(2)
        ]
    )
    monkeypatch.undo()
    assert result.values.shape == (2, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed is not absolute
    # The method sums 20 float32 maps: ≤ 19 roundings of partial sums of |map|, which the
    # unsigned map bounds, and each map's and the mean's: 20 + 2.
    unsigned = expected if absolute else result_unsigned(model, inputs, targets, params)
    bound = float32_rounding(expected, 22, magnitude=unsigned)
    assert max_relative_deviation(result.values, expected) <= bound
    assert_untouched(model)


def test_over_saliency_on_colour_images_averages_the_max_over_channels() -> None:
    model = small_cnn(channels=3)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 4, 2])
    params = {"samples": 8, "noise": 0.1, "seed": 3}

    result = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    saliency = Saliency(model)
    per_channel_max = captum_mean_over_noise(
        lambda x, target: saliency.attribute(x, target=target, abs=True).amax(dim=1, keepdim=True),
        inputs,
        targets,
        SmoothGradParams.model_validate(params),
    )
    assert not result.signed
    # 8 float32 maps summed, each map and the mean rounded: 8 + 2 roundings of values ≤ the mean's.
    bound = float32_rounding(per_channel_max[:, 0], 10)
    assert max_relative_deviation(result.values, per_channel_max[:, 0]) <= bound
    assert not torch.allclose(result.values[0], result.values[1])


def test_over_integrated_gradients_equals_captum_over_the_same_noise() -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4)).double()
    targets = torch.tensor([1, 3])
    params = {"samples": 4, "noise": 0.15, "base": "integrated_gradients", "abs": False}

    result = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    gradients = IntegratedGradients(model)
    # Captum's trapezoid rule on 50 intervals (51 points), its weights (summing to 50/51)
    # rescaled to the rule's: see `captum_integrated_gradients` in test_integrated_gradients.
    expected = captum_mean_over_noise(
        lambda x, target: (
            gradients.attribute(
                x,
                baselines=make_baseline("black", x),
                target=target,
                n_steps=51,
                method="riemann_trapezoid",
            ).sum(dim=1, keepdim=True)
            * 51
            / 50
        ),
        inputs,
        targets,
        SmoothGradParams.model_validate(params),
    )
    assert result.signed
    # 4 float32 maps summed, each map and the mean rounded: 4 + 2 roundings of values up to the
    # mean of |map|.
    unsigned = result_unsigned(model, inputs, targets, params)
    bound = float32_rounding(expected[:, 0], 6, magnitude=unsigned)
    assert max_relative_deviation(result.values, expected[:, 0]) <= bound


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations:UserWarning")
def test_over_guided_backprop_equals_captum_over_the_same_noise() -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    targets = torch.tensor([2, 0])
    params = {"samples": 6, "noise": 0.15, "base": "guided_backprop", "seed": 1}

    result = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    guided = GuidedBackprop(model)
    expected = captum_mean_over_noise(
        lambda x, target: guided.attribute(x, target=target).abs().amax(dim=1, keepdim=True),
        inputs,
        targets,
        SmoothGradParams.model_validate(params),
    )
    assert not result.signed
    # 6 float32 maps summed, each map and the mean rounded: 6 + 2 roundings.
    assert max_relative_deviation(result.values, expected[:, 0]) <= float32_rounding(expected, 8)


@pytest.mark.parametrize(
    "base", ["saliency", "integrated_gradients", "guided_backprop", "deeplift"]
)
@pytest.mark.parametrize("absolute", [True, False])
def test_is_the_mean_of_the_base_methods_maps_over_the_noisy_copies(
    base: str, absolute: bool
) -> None:
    model = small_cnn(channels=3)
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6)).double()
    target = torch.tensor([1])

    result = explain(
        "smoothgrad",
        model,
        image,
        target,
        {"samples": 3, "noise": 0.3, "base": base, "abs": absolute, "seed": 2},
        cam_layer="",
    )

    noisy = image + sigma(0.3, image) * same_noise(2, 3, image.shape[1:]).double()
    # The base as SmoothGrad documents it: its defaults, integrated_gradients not refined.
    params_by_base: dict[str, dict[str, object]] = {
        "saliency": {"abs": absolute},
        "guided_backprop": {"abs": absolute},
        "integrated_gradients": {"steps": 50, "max_steps": 50},
        "deeplift": {},
    }
    base_params = params_by_base[base]
    maps = torch.cat(
        [explain(base, model, x[None], target, base_params, cam_layer="").values for x in noisy]
    )
    expected = (maps.abs() if absolute else maps).mean(dim=0, keepdim=True)
    # Each side rounds 3 float64 maps to float32, sums them and divides: 2 × (3 + 2) roundings.
    bound = float32_rounding(expected, roundings=10, magnitude=maps.abs().amax(0, keepdim=True))
    assert max_relative_deviation(result.values, expected) <= bound


def test_without_noise_equals_the_base_method() -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)).double()
    targets = torch.tensor([4, 1])

    smoothed = explain("smoothgrad", model, inputs, targets, {"noise": 0.0}, cam_layer="")

    saliency = explain("saliency", model, inputs, targets, {}, cam_layer="")
    # Equal float32 maps summed and divided: samples + 1 roundings, relative to each value.
    samples = SmoothGradParams().samples
    torch.testing.assert_close(
        smoothed.values, saliency.values, rtol=(samples + 1) * EPS32, atol=0.0
    )


def test_the_seed_decides_the_noise() -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(8)).double()
    targets = torch.tensor([2])

    def run(seed: int) -> torch.Tensor:
        params = {"samples": 5, "seed": seed}
        return explain("smoothgrad", model, inputs, targets, params, cam_layer="").values

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


@pytest.mark.parametrize("copies", [1, 2])
def test_the_pass_size_does_not_change_the_map(
    copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(11)).double()
    targets = torch.tensor([3, 0])
    params = {"samples": 5, "seed": 2}
    in_one_pass = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    monkeypatch.setattr(method_base, "PASS_INPUT_ELEMENTS", copies * inputs.numel())
    in_passes = explain("smoothgrad", model, inputs, targets, params, cam_layer="")

    # Each side rounds 5 unsigned float64 maps to float32, sums and divides: 2 × (5 + 2).
    bound = float32_rounding(in_one_pass.values, 14)
    assert max_relative_deviation(in_passes.values, in_one_pass.values) <= bound


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn(channels=3)
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(10)).double()
    targets = torch.tensor([4, 0, 2])
    params = {"samples": 4}

    on_cpu = explain("smoothgrad", model, inputs, targets, params, cam_layer="").values
    on_device = explain(
        "smoothgrad", model.to(device), inputs.to(device), targets.to(device), params, cam_layer=""
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either); each side rounds 4 unsigned maps, sums and divides: 2 × (4 + 2).
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= float32_rounding(on_cpu, 12)
