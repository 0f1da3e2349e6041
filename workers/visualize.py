"""Activation maximisation: the input that most raises a class logit or a channel of a layer.

Follows Olah et al., "Feature Visualization" (Distill 2017): the image is optimised with Adam in
a decorrelated space (a 1/f-scaled Fourier spectrum and, for RGB, decorrelated colour), squashed
to [0, 1] pixels by a sigmoid, and seen by the model through a random shift, zoom and rotation
each step, so only features that survive small transformations grow.

Several requests run as one batch, each with its own parameters and its own generator seeded by
its `seed` (drawn on the CPU whatever the device): the same requests in the same batch give
bit-identical images on CPU. Batched convolutions round differently with the batch size, though,
and Adam amplifies rounding-level gradients, so the same request batched with others can end in a
different image, as good but not identical. The model is only read: no parameter gradients, no
hooks left behind.
"""

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from schemas.models import InputSpec
from schemas.visualizations import VisualizationParams
from workers.deadline import check_deadline
from workers.methods.base import MethodParameterError, TargetError, find_layer

# Square root of ImageNet's RGB covariance (U·sqrt(S) of its SVD), as published with Lucid
# (lucid/optvis/param/color.py, `color_correlation_svd_sqrt`).
_IMAGENET_COLOUR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
# Lucid's initial spectrum spread and image scale (its `fft_image` divides by 4), which the
# default learning rate of 0.05 comes with: a near-grey start, a few grey levels per step.
_INITIAL_SD = 0.01
_FOURIER_GAIN = 0.25


def _colour_cholesky() -> torch.Tensor:
    """L with L·Lᵀ = the ImageNet colour covariance, so white noise in z becomes natural colour.

    Scaled, as Lucid does, so that its largest column has unit norm.
    """
    covariance = _IMAGENET_COLOUR_SQRT @ _IMAGENET_COLOUR_SQRT.T
    cholesky = torch.linalg.cholesky(covariance)
    return (cholesky / cholesky.norm(dim=0).max()).to(torch.float32)


COLOUR_CHOLESKY = _colour_cholesky()
"""Maps decorrelated colour components to RGB logits (3×3, lower triangular)."""


@dataclass(frozen=True)
class Visualization:
    """One synthesised image and what the model makes of it (as quantised to uint8).

    `image` is uint8 H×W (grayscale models) or H×W×3 (RGB). `activation` is the target logit or
    the channel's mean activation; `probability` the target's softmax probability, None for a
    channel. `compute_ms` is the batch's time divided by its size.
    """

    image: np.ndarray
    activation: float
    probability: float | None
    compute_ms: float


def visualize(
    model: nn.Module,
    spec: InputSpec,
    requests: Sequence[VisualizationParams],
    *,
    device: torch.device,
) -> list[Visualization]:
    """Synthesise one image per request, optimised together as one batch.

    `model` is in eval mode on `device` and takes inputs normalised as `spec` says. The requests
    must share every setting but their objective and seed (`VisualizationParams.batch_key`).
    Raises TargetError for a class the model does not have, MethodParameterError for an unknown
    layer, a channel out of range or a `size` the model cannot take, and ValueError for a batch
    whose settings differ.
    """
    if model.training:
        raise ValueError("the model must be in eval mode: BatchNorm would mix the batch")
    if not requests:
        return []
    settings = requests[0]
    if any(request.batch_key() != settings.batch_key() for request in requests):
        raise ValueError("requests in one batch must share all settings but target and seed")
    started = time.perf_counter()
    height, width = (settings.size, settings.size) if settings.size else (spec.height, spec.width)
    generators = [torch.Generator().manual_seed(request.seed) for request in requests]
    image = _ImageParameterisation(
        (spec.channels, height, width), settings.decorrelate, generators, device
    )
    mean = torch.tensor(spec.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(-1, 1, 1)

    def objective(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objectives.evaluate(model((pixels - mean) / std))

    with _Objectives(model, requests) as objectives, torch.enable_grad():
        optimiser = torch.optim.Adam([image.parameters], lr=settings.lr)
        for step in range(settings.steps):
            check_deadline()
            pixels = image.pixels()
            views = _random_views(pixels, settings, generators)
            try:
                activations, _ = objective(views)
            except RuntimeError as exc:
                if step > 0 or (height, width) == (spec.height, spec.width):
                    raise
                raise MethodParameterError(
                    "size", f"the model does not run on {height}×{width} images: {exc}"
                ) from exc
            penalties = settings.l2 * _mean_square_offset(pixels)
            penalties = penalties + settings.tv * _total_variation(pixels)
            (gradient,) = torch.autograd.grad(-(activations - penalties).sum(), image.parameters)
            image.parameters.grad = gradient
            optimiser.step()
        with torch.no_grad():
            levels = torch.round(image.pixels() * 255)
            activations, probabilities = objective(levels / 255)
    per_image_ms = (time.perf_counter() - started) * 1000 / len(requests)
    images = levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [
        Visualization(
            # A model of other than 3 channels is shown by its first one, in grey.
            image=images[i] if spec.channels == 3 else images[i, :, :, 0],
            activation=float(activations[i]),
            probability=float(probabilities[i]) if request.target is not None else None,
            compute_ms=per_image_ms,
        )
        for i, request in enumerate(requests)
    ]


def render_png(visualization: Visualization) -> bytes:
    """PNG bytes of the image: 8-bit grayscale or RGB."""
    buffer = io.BytesIO()
    Image.fromarray(visualization.image).save(buffer, format="PNG")
    return buffer.getvalue()


class _ImageParameterisation:
    """A batch of images as the tensor Adam optimises, and the map from it to [0, 1] pixels.

    Decorrelated: per-channel rfft2 spectra whose coefficients are scaled by 1/frequency, the
    amplitude spectrum of natural images, so that white coefficients make a natural-looking image
    and a step is about as large at every frequency; for RGB, the channels are then mixed by
    `COLOUR_CHOLESKY`. Otherwise: raw per-pixel values. Either way a sigmoid gives the pixels.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        decorrelate: bool,
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> None:
        """`shape` is the images' (channels, height, width)."""
        channels, height, width = shape
        self.size = (height, width)
        self.decorrelate = decorrelate
        spectrum = (channels, height, width // 2 + 1, 2)
        optimised = spectrum if decorrelate else shape
        initial = torch.stack([torch.randn(optimised, generator=g) for g in generators])
        initial = initial * _INITIAL_SD
        self.parameters = initial.to(device).requires_grad_(True)
        frequencies = torch.sqrt(
            torch.fft.fftfreq(height)[:, None] ** 2 + torch.fft.rfftfreq(width)[None, :] ** 2
        )
        # The constant term gets the gain of the lowest frequency the image can hold.
        self.spectral_gain = (1 / frequencies.clamp(min=1 / max(height, width))).to(device)
        self.colour = COLOUR_CHOLESKY.to(device) if channels == 3 and decorrelate else None

    def pixels(self) -> torch.Tensor:
        """The images in [0, 1], (N, C, H, W)."""
        if not self.decorrelate:
            return torch.sigmoid(self.parameters)
        spectra = torch.view_as_complex(self.parameters) * self.spectral_gain
        # Image by image, and colours mixed term by term rather than by a matrix product: batched
        # FFTs and matmuls round differently with the batch size, and Adam would amplify that
        # rounding into a visibly different image for the same request in another batch.
        logits = _FOURIER_GAIN * torch.cat(
            [torch.fft.irfft2(spectrum[None], s=self.size, norm="ortho") for spectrum in spectra]
        )
        if self.colour is not None:
            z, c = logits.unbind(dim=1), self.colour
            logits = torch.stack(
                [c[i, 0] * z[0] + c[i, 1] * z[1] + c[i, 2] * z[2] for i in range(3)], dim=1
            )
        return torch.sigmoid(logits)


def _random_views(
    pixels: torch.Tensor, settings: VisualizationParams, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Each image shifted by up to `jitter` pixels, zoomed and rotated at random.

    One bilinear resampling per step; the image is treated as periodic (as its Fourier
    parameterisation is), so a shift is a roll and no border ever enters the view.
    """
    _, _, height, width = pixels.shape
    draws = []
    for generator in generators:
        zoom = settings.scale[int(torch.randint(len(settings.scale), (1,), generator=generator))]
        angle = math.radians(settings.rotate * (2 * float(torch.rand(1, generator=generator)) - 1))
        shift = torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=generator)
        draws.append([math.cos(angle) / zoom, math.sin(angle) / zoom, *shift.tolist()])
    # Elementwise arithmetic only (no matrix products, whose rounding varies with the batch
    # size), so each sample's view is the same in any batch.
    cos, sin, shift_x, shift_y = torch.tensor(draws, dtype=pixels.dtype, device=pixels.device).T[
        :, :, None, None
    ]
    y = torch.arange(height, dtype=pixels.dtype, device=pixels.device)[:, None] - (height - 1) / 2
    x = torch.arange(width, dtype=pixels.dtype, device=pixels.device)[None, :] - (width - 1) / 2
    source_x = torch.remainder(cos * x - sin * y + shift_x + (width - 1) / 2, width)
    source_y = torch.remainder(sin * x + cos * y + shift_y + (height - 1) / 2, height)
    # One wrapped row and column let bilinear sampling cross the seam; with align_corners the
    # padded image's last pixel centre (index width) sits at +1.
    padded = F.pad(pixels, (0, 1, 0, 1), mode="circular")
    grid = torch.stack([2 * source_x / width - 1, 2 * source_y / height - 1], dim=-1)
    return F.grid_sample(padded, grid, mode="bilinear", align_corners=True)


def _mean_square_offset(pixels: torch.Tensor) -> torch.Tensor:
    """Per image, the mean squared distance of its pixels from mid-grey."""
    return ((pixels - 0.5) ** 2).mean(dim=(1, 2, 3))


def _total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute difference between vertical and horizontal neighbours."""
    vertical = (pixels[:, :, 1:] - pixels[:, :, :-1]).abs().mean(dim=(1, 2, 3))
    horizontal = (pixels[:, :, :, 1:] - pixels[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return vertical + horizontal


class _Objectives:
    """Each request's objective on a forward pass: its class logit or its channel's mean.

    A context manager: hooks on the requested layers live only inside it.
    """

    def __init__(self, model: nn.Module, requests: Sequence[VisualizationParams]) -> None:
        self.requests = requests
        names = {request.layer for request in requests if request.layer is not None}
        self.layers = {name: find_layer(model, name) for name in sorted(names)}
        self.outputs: dict[str, list[object]] = {name: [] for name in self.layers}

    def __enter__(self) -> "_Objectives":
        self._handles = [
            layer.register_forward_hook(self._recorder(name)) for name, layer in self.layers.items()
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _recorder(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            self.outputs[name].append(output)

        return record

    def evaluate(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per request, the activation to maximise and its class probability (NaN for channels).

        Consumes the layer outputs recorded during the forward pass that gave `logits`.
        """
        captured = {name: self._single_output(name) for name in self.layers}
        if logits.ndim != 2:
            raise ValueError(f"the model must return (N, classes) logits, not {logits.shape}")
        softmax = torch.softmax(logits, dim=1)
        activations, probabilities = [], []
        for i, request in enumerate(self.requests):
            if request.target is not None:
                if request.target >= logits.shape[1]:
                    raise TargetError(
                        f"class {request.target} is out of range: "
                        f"the model has classes 0..{logits.shape[1] - 1}"
                    )
                activations.append(logits[i, request.target])
                probabilities.append(softmax[i, request.target])
            else:
                assert request.layer is not None and request.channel is not None
                output = captured[request.layer]
                if request.channel >= output.shape[1]:
                    raise MethodParameterError(
                        "channel",
                        f"channel {request.channel} is out of range: layer {request.layer!r} "
                        f"has channels 0..{output.shape[1] - 1}",
                    )
                activations.append(output[i, request.channel].mean())
                probabilities.append(torch.full((), math.nan, device=logits.device))
        return torch.stack(activations), torch.stack(probabilities)

    def _single_output(self, name: str) -> torch.Tensor:
        outputs, self.outputs[name] = self.outputs[name], []
        if len(outputs) != 1:
            raise MethodParameterError(
                "layer", f"layer {name!r} runs {len(outputs)} times per forward pass, not once"
            )
        (output,) = outputs
        if not isinstance(output, torch.Tensor) or output.ndim < 2:
            raise MethodParameterError(
                "layer", f"layer {name!r} must output one (N, channels, ...) tensor"
            )
        return output
