"""Activation maximisation on the demo model, on hand-built filters with a known preferred
pattern, and on torchvision's ResNet-50; determinism, batching, errors and model hygiene."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from method_checks import DEVICES, EPS32, assert_untouched
from PIL import Image
from torch import nn
from torchvision.models import resnet50

from schemas.models import InputSpec
from schemas.visualizations import VisualizationParams
from workers.methods import MethodParameterError, TargetError
from workers.repository import load_model
from workers.visualize import COLOUR_CHOLESKY, Visualization, render_png, visualize

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def params(**fields: object) -> VisualizationParams:
    return VisualizationParams.model_validate(fields)


def decode_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def normalised(image: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """The decoded uint8 image as the model's normalised (1, C, H, W) input."""
    pixels = torch.from_numpy(image).to(torch.float32) / 255
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return ((pixels - mean) / std)[None]


def grating(size: int, period: int, direction: tuple[int, int]) -> torch.Tensor:
    """cos(2π (direction · (row, column)) / period) on a size×size grid."""
    index = torch.arange(size, dtype=torch.float32)
    phase = direction[0] * index[:, None] + direction[1] * index[None, :]
    return torch.cos(2 * math.pi * phase / period)


def one_filter_model(kernel: torch.Tensor) -> nn.Sequential:
    """A single-channel conv with `kernel` (out, in, k, k), ReLU, and the global mean."""
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[-1], bias=False)
    conv.weight.data = kernel.clone()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return model.eval().requires_grad_(False)


def spectral_correlation(image: np.ndarray, pattern: np.ndarray) -> float:
    """Pearson correlation, over spatial frequencies, of the two power spectra (means removed).

    The power spectrum is the part of an image that a shift leaves alone, so this compares the
    image with the pattern up to translation, which is all jitter lets the optimisation fix.
    """
    spectra = [
        np.abs(np.fft.rfft2(array - array.mean())) ** 2
        for array in (image.astype(np.float64), pattern.astype(np.float64))
    ]
    return float(np.corrcoef(spectra[0].ravel(), spectra[1].ravel())[0, 1])


def small_cnn(channels: int = 1, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    return model.eval().requires_grad_(False)


class PerSampleConv2d(nn.Conv2d):
    """A convolution that runs each sample of a batch on its own, so that its arithmetic, and
    its rounding, is that of a batch of one whatever the batch."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(PerSampleConv2d, self).forward(x[None]) for x in input])


class PerSampleLinear(nn.Linear):
    """A linear layer that runs each sample of a batch on its own, as `PerSampleConv2d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(PerSampleLinear, self).forward(x[None]) for x in input])


def per_sample(model: nn.Sequential) -> nn.Sequential:
    """`model` with the same weights and every convolution and linear layer run per sample."""
    for index, module in enumerate(model):
        if type(module) in (nn.Conv2d, nn.Linear):
            module.__class__ = PerSampleConv2d if isinstance(module, nn.Conv2d) else PerSampleLinear
            model[index] = module
    return model


GRAY_32 = InputSpec(channels=1, height=32, width=32, mean=[0.5], std=[0.5])
RGB_16 = InputSpec(channels=3, height=16, width=16, mean=[0.5] * 3, std=[0.25] * 3)


@pytest.fixture(scope="module")
def calibrated_resnet50() -> nn.Module:
    """torchvision's ResNet-50, BatchNorm statistics taken from random data to keep it sane."""
    torch.manual_seed(0)
    model = resnet50(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
    return model.eval().requires_grad_(False)


def test_the_demo_model_sees_each_class_in_its_image() -> None:
    loaded = load_model(ROOT / "models" / "demo-lesions" / "1", CPU)
    spec = loaded.manifest.input

    results = visualize(loaded.module, spec, [params(target=c) for c in range(3)], device=CPU)

    images = [decode_png(render_png(result)) for result in results]
    # The decoded images as one batch of three, as `visualize` scored them: the same input and
    # the same arithmetic, so the same logits to the bit.
    batch_logits = loaded.module(torch.cat([normalised(image, spec) for image in images]))
    for target, (result, image) in enumerate(zip(results, images, strict=True)):
        assert image.shape == (spec.height, spec.width) and image.dtype == np.uint8
        logits = batch_logits[target]
        probabilities = torch.softmax(logits, dim=0)
        assert probabilities[target] >= 0.9, (target, probabilities.tolist())
        # A softmax of three logits: three exps, their sum and a quotient, ≲ 5 eps32/2 each side.
        assert result.probability == pytest.approx(float(probabilities[target]), rel=5 * EPS32)
        assert result.activation == float(logits[target])
    assert_untouched(loaded.module)


def test_a_grating_detector_gets_its_grating() -> None:
    # A 24×24 patch of a diagonal grating (period 8) as the filter: its preferred input is that
    # grating, at any phase; the orthogonal grating excites it not at all.
    pattern = grating(32, period=8, direction=(1, 1))
    model = one_filter_model(pattern[:24, :24][None, None])

    (result,) = visualize(model, GRAY_32, [params(layer="1", channel=0)], device=CPU)

    orthogonal = grating(32, period=8, direction=(1, -1))
    assert spectral_correlation(result.image, pattern.numpy()) > 0.8
    assert abs(spectral_correlation(result.image, orthogonal.numpy())) < 0.1
    assert result.probability is None
    response = model(normalised(result.image, GRAY_32))[0, 0]
    # The same input, a batch of one both times: the same arithmetic, the same value to the bit.
    assert result.activation == float(response)


def test_a_red_detector_gets_a_red_image() -> None:
    # Through the decorrelated colour basis, the image still has to end up in plain RGB.
    model = one_filter_model(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))

    (result,) = visualize(model, RGB_16, [params(target=0)], device=CPU)

    assert result.image.shape == (16, 16, 3)
    red, green, blue = result.image.reshape(-1, 3).mean(axis=0)
    assert red - max(green, blue) > 50


def test_the_colour_basis_is_a_cholesky_factor_of_the_imagenet_covariance() -> None:
    # The covariance that the published square root (U·sqrt(S), Lucid) stands for.
    square_root = torch.tensor(
        [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
    )
    covariance = square_root @ square_root.T

    # In float64, where only the factor's rounding to float32 (eps32/2 of each entry) is left:
    # each entry of C Cᵀ, and the scale taken from one of them, move by ≲ eps32 relative to the
    # sum of |terms|, twice that with the scale; 4 eps32 to spare. The published square root
    # rounds to 0.01, so a factor of another covariance is off by 1e-3 or more.
    factor = COLOUR_CHOLESKY.double()
    product = factor @ factor.T
    scale = covariance[0, 0] / product[0, 0]
    scaled, magnitude = product * scale, factor.abs() @ factor.abs().T * scale
    assert bool(((scaled - covariance).abs() <= 4 * EPS32 * magnitude).all())
    assert torch.equal(COLOUR_CHOLESKY, COLOUR_CHOLESKY.tril())
    # Normalised in float64, then each entry rounded to float32: the largest column norm is 1
    # within eps32/2, and a few float64 roundings; eps32 to spare.
    assert float(factor.norm(dim=0).max()) == pytest.approx(1.0, rel=0, abs=EPS32)


def test_the_same_seed_gives_the_same_png_and_another_seed_another_image() -> None:
    model = small_cnn()
    first, again, other = (
        render_png(visualize(model, GRAY_32, [params(target=1, seed=s, steps=16)], device=CPU)[0])
        for s in (7, 7, 8)
    )

    assert first == again
    assert not np.array_equal(decode_png(first), decode_png(other))


def test_a_batch_gives_what_single_requests_give() -> None:
    # Convolutions and matrix products round differently with the batch size, and Adam turns a
    # rounding-level gradient into a full step. Run per sample, every layer computes in a batch
    # what it computes alone, so a request must end with the image and activation it gets
    # alone, to the bit, unless the batch mixes requests.
    model = per_sample(small_cnn())
    requests = [
        params(target=2, seed=3, steps=8),
        params(layer="3", channel=5, seed=4, steps=8),
        params(target=0, seed=3, steps=8),
    ]

    batch = visualize(model, GRAY_32, requests, device=CPU)
    singles = [visualize(model, GRAY_32, [request], device=CPU)[0] for request in requests]

    for together, alone in zip(batch, singles, strict=True):
        np.testing.assert_array_equal(together.image, alone.image)
        assert together.activation == alone.activation
    assert batch[1].probability is None
    assert not np.array_equal(batch[0].image, batch[2].image)


def test_resnet50_gives_an_rgb_image_of_the_requested_size(
    calibrated_resnet50: nn.Module,
) -> None:
    spec = InputSpec(
        channels=3, height=224, width=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    requests = [params(target=7, size=64, steps=4), params(target=412, size=64, steps=4)]

    results = visualize(calibrated_resnet50, spec, requests, device=CPU)

    for result in results:
        assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
        assert decode_png(render_png(result)).shape == (64, 64, 3)
        assert result.probability is not None and 0 < result.probability < 1
        assert result.compute_ms > 0
    with pytest.raises(TargetError, match="1000"):
        visualize(calibrated_resnet50, spec, [params(target=1000, size=64, steps=4)], device=CPU)
    assert_untouched(calibrated_resnet50)


@pytest.mark.parametrize(
    ("request_fields", "error", "parameter"),
    [
        ({"layer": "no_such", "channel": 0}, MethodParameterError, "layer"),
        ({"layer": "3", "channel": 16}, MethodParameterError, "channel"),
        ({"target": 3}, TargetError, None),
    ],
)
def test_rejects_what_the_model_does_not_have(
    request_fields: dict[str, object], error: type[ValueError], parameter: str | None
) -> None:
    model = small_cnn()

    with pytest.raises(error) as caught:
        visualize(model, GRAY_32, [params(steps=4, **request_fields)], device=CPU)

    assert isinstance(caught.value, ValueError)
    if parameter is not None:
        assert getattr(caught.value, "parameter", None) == parameter
    assert_untouched(model)


def test_rejects_a_layer_that_runs_twice() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), relu, nn.Conv2d(2, 2, 3), relu, nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()

    with pytest.raises(MethodParameterError, match="2 times"):
        visualize(model, GRAY_32, [params(layer="1", channel=0, steps=2)], device=CPU)

    assert_untouched(model)


def test_rejects_a_size_the_model_cannot_take() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 2)).eval().requires_grad_(False)

    (result,) = visualize(model, GRAY_32, [params(target=1, steps=2)], device=CPU)
    with pytest.raises(MethodParameterError, match="48×48") as caught:
        visualize(model, GRAY_32, [params(target=1, size=48, steps=2)], device=CPU)

    assert result.image.shape == (32, 32)
    assert caught.value.parameter == "size"
    assert_untouched(model)


def test_rejects_a_batch_whose_settings_differ() -> None:
    with pytest.raises(ValueError, match="share"):
        visualize(
            small_cnn(),
            GRAY_32,
            [params(target=0, steps=4), params(target=1, steps=5)],
            device=CPU,
        )


def test_refuses_a_model_in_training_mode() -> None:
    model = small_cnn().train()

    with pytest.raises(ValueError, match="eval mode"):
        visualize(model, GRAY_32, [params(target=0, steps=2)], device=CPU)

    assert model.training


def test_leaves_the_model_as_it_was_even_with_trainable_parameters() -> None:
    model = small_cnn().requires_grad_(True)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    visualize(model, GRAY_32, [params(target=0, steps=4, l2=1.0, tv=1.0)], device=CPU)

    assert_untouched(model)
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_the_size_parameter_sets_the_image_size_and_pixels_can_be_raw() -> None:
    model = small_cnn()

    (result,) = visualize(
        model, GRAY_32, [params(target=0, size=20, steps=4, decorrelate=False)], device=CPU
    )

    assert result.image.shape == (20, 20)
    assert decode_png(render_png(result)).shape == (20, 20)


def test_no_requests_no_work() -> None:
    assert visualize(small_cnn(), GRAY_32, [], device=CPU) == []


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device(device: str) -> None:
    model = small_cnn(channels=3).to(device)
    requests = [params(target=1, steps=8), params(layer="3", channel=2, steps=8)]

    results = visualize(model, RGB_16, requests, device=torch.device(device))

    on_cpu = visualize(model.cpu(), RGB_16, requests, device=CPU)
    for result, reference in zip(results, on_cpu, strict=True):
        assert isinstance(result, Visualization)
        assert result.image.shape == (16, 16, 3)
        if device == "cpu":
            # The same arithmetic on the same device: the same image to the bit.
            np.testing.assert_array_equal(result.image, reference.image)
            continue
        difference = np.abs(result.image.astype(int) - reference.image.astype(int))
        assert difference.max() <= 2
