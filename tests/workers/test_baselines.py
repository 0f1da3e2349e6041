"""Baselines in normalised input space: exact with the model's normalisation, per image without."""

import math

import pytest
import torch
from method_checks import DEVICES, EPS32
from torchvision.transforms.functional import gaussian_blur as torchvision_blur

from workers.methods.base import Normalisation
from workers.methods.baselines import BLUR_SIGMA_FRACTION, gaussian_blur, make_baseline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPS64 = torch.finfo(torch.float64).eps
EXACT = {"rtol": 0.0, "atol": 0.0}


def blur_taps(size: int) -> int:
    """The taps of the blur baseline's kernel along each axis of a `size`-pixel square image."""
    return 2 * min(math.ceil(3 * BLUR_SIGMA_FRACTION * size), size - 1) + 1


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def pixels(count: int = 2, size: int = 20) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_black_is_pixel_zero_normalised() -> None:
    inputs = normalised(pixels())

    black = make_baseline("black", inputs, normalisation=Normalisation(MEAN, STD))

    # The same two IEEE operations on the same float32 values, (0 − mean) / std: exact.
    torch.testing.assert_close(black, normalised(torch.zeros_like(inputs)), **EXACT)


def test_without_the_normalisation_black_is_each_images_darkest_value() -> None:
    images = pixels()
    images[0, :, 3, 4] = 0.0  # the first image holds a black pixel, the second does not
    inputs = normalised(images)

    black = make_baseline("black", inputs)

    exact = make_baseline("black", inputs, normalisation=Normalisation(MEAN, STD))
    # Image 0's darkest value is its black pixel, normalised by the same operations: exact.
    torch.testing.assert_close(black[0], exact[0], **EXACT)
    darkest = inputs[1].amin(dim=(1, 2), keepdim=True).expand(3, 20, 20)
    torch.testing.assert_close(black[1], darkest, **EXACT)
    assert bool((black[1] > exact[1]).all())


def test_mean_is_each_images_channel_mean() -> None:
    inputs = normalised(pixels()).double()

    mean = make_baseline("mean", inputs)

    assert mean.shape == inputs.shape
    # Two means of 400 values, summed in any order: each ≤ 400 · eps64/2 of the mean of |x| off.
    tolerance = 400 * EPS64 * float(inputs.abs().mean(dim=(2, 3)).max())
    torch.testing.assert_close(mean[:, :, 5, 7], inputs.mean(dim=(2, 3)), rtol=0.0, atol=tolerance)
    assert bool((mean == mean[:, :, :1, :1]).all())


def test_blur_equals_torchvisions_gaussian_blur() -> None:
    # In float64, which both blurs follow: what separates them is their order of summation.
    inputs = normalised(pixels(size=40)).double()
    sigma = BLUR_SIGMA_FRACTION * 40

    blurred = make_baseline("blur", inputs)

    radius = int(torch.tensor(3 * sigma).ceil())
    expected = torchvision_blur(inputs, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    # Kernels ≥ 0 that sum to 1: torchvision's k² products and sums and the two passes' 2k,
    # each ≤ eps64/2 of max |x|, and each kernel's exp and normalisation, a few more.
    taps = 2 * radius + 1
    tolerance = (taps * taps + 2 * taps + 8) * EPS64 * float(inputs.abs().max())
    torch.testing.assert_close(blurred, expected, rtol=0.0, atol=tolerance)
    assert blurred.std() < 0.5 * inputs.std()


def test_blur_commutes_with_normalisation_and_keeps_constants() -> None:
    # In float64. The kernel sums to 1 within taps · eps64/2, each pass's sums ≤ taps · eps64/2
    # of the largest value, the normalisation 2 roundings: 4 · taps eps64 of max |x| bounds both.
    images = pixels(size=24).double()
    blurred = make_baseline("blur", normalised(images))

    tolerance = 4 * blur_taps(24) * EPS64 * float(blurred.abs().max())
    torch.testing.assert_close(
        blurred, normalised(gaussian_blur(images, 1.2)), rtol=0.0, atol=tolerance
    )
    # σ = 5 gives 2 · 15 + 1 taps on 24 pixels.
    constant = torch.full((1, 3, 24, 24), 0.3, dtype=torch.float64)
    torch.testing.assert_close(
        gaussian_blur(constant, 5.0), constant, rtol=4 * 31 * EPS64, atol=0.0
    )


def test_blur_fits_images_smaller_than_its_kernel() -> None:
    inputs = torch.randn(1, 1, 3, 5)

    blurred = gaussian_blur(inputs, 4.0)

    assert blurred.shape == inputs.shape
    torch.testing.assert_close(blurred.mean(), inputs.mean(), rtol=0.3, atol=0.3)


def test_uniform_noise_is_seeded_and_shared_by_the_batch() -> None:
    inputs = normalised(pixels(count=3))

    noise = make_baseline("uniform", inputs, seed=7, normalisation=Normalisation(MEAN, STD))

    # The same draws and the same elementwise operations: exact, here and for a single row.
    torch.testing.assert_close(
        noise,
        make_baseline("uniform", inputs, seed=7, normalisation=Normalisation(MEAN, STD)),
        **EXACT,
    )
    assert not torch.allclose(
        noise, make_baseline("uniform", inputs, seed=8, normalisation=Normalisation(MEAN, STD))
    )
    assert torch.equal(noise[0], noise[2])
    torch.testing.assert_close(
        make_baseline("uniform", inputs[1:2], seed=7, normalisation=Normalisation(MEAN, STD)),
        noise[:1],
        **EXACT,
    )
    as_pixels = noise * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    # Black, white, their difference, the scaled draw, its sum with black, then × std and
    # + mean: 7 roundings of normalised values |v| ≤ 2.7, ≤ 0.62 in pixels after × std, and
    # one of a pixel ≤ 1: within 8 eps32 of [0, 1].
    assert float(as_pixels.min()) >= -8 * EPS32 and float(as_pixels.max()) <= 1 + 8 * EPS32
    assert abs(float(as_pixels.mean()) - 0.5) < 0.05


def test_uniform_noise_without_the_normalisation_spans_each_image() -> None:
    inputs = normalised(pixels())
    inputs[1] *= 0.5

    noise = make_baseline("uniform", inputs, seed=1)

    low, high = inputs.amin(dim=(2, 3)), inputs.amax(dim=(2, 3))
    # low + a rounded product ≥ 0 never rounds below low; above, the rounded difference and
    # product, then the sum, ≤ 3 roundings of values ≤ |low| + |high|.
    assert bool((noise.amin(dim=(2, 3)) >= low).all())
    slack = 3 * EPS32 / 2 * (low.abs() + high.abs())
    assert bool((noise.amax(dim=(2, 3)) <= high + slack).all())
    assert bool((noise.amax(dim=(2, 3)) - noise.amin(dim=(2, 3)) > 0.9 * (high - low)).all())


@pytest.mark.parametrize("kind", ["black", "blur", "mean", "uniform"])
def test_follows_the_inputs_dtype_and_never_requires_grad(kind: str) -> None:
    inputs = normalised(pixels()).double().requires_grad_(True)

    baseline = make_baseline(kind, inputs, seed=0)

    assert baseline.dtype == torch.float64
    assert baseline.shape == inputs.shape
    assert not baseline.requires_grad


def test_rejects_an_unknown_kind_and_a_normalisation_of_the_wrong_size() -> None:
    inputs = normalised(pixels())

    with pytest.raises(ValueError, match="unknown baseline 'grey'"):
        make_baseline("grey", inputs)
    with pytest.raises(ValueError, match="a normalisation of 1 channels for 3"):
        make_baseline("black", inputs, normalisation=Normalisation((0.5,), (0.25,)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["black", "blur", "mean", "uniform"])
def test_on_each_device_matches_cpu(device: str, kind: str) -> None:
    # In float64 (no TF32 either). Black and uniform are a few elementwise roundings of values
    # ≤ max |x|; the mean sums 400 of them in any order; the blur, two passes of k taps each.
    inputs = normalised(pixels()).double()
    roundings = {"black": 4, "uniform": 4, "mean": 400, "blur": 4 * blur_taps(20)}[kind]

    on_cpu = make_baseline(kind, inputs, seed=3, normalisation=Normalisation(MEAN, STD))
    on_device = make_baseline(
        kind, inputs.to(device), seed=3, normalisation=Normalisation(MEAN, STD)
    )

    assert on_device.device.type == device
    tolerance = roundings * EPS64 * float(inputs.abs().max())
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=0.0, atol=tolerance)
