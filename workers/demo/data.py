"""A deterministic synthetic data set of grayscale "tissue" images with lesions and their masks.

Each sample is 128×128, float32 in [0, 1], with a textured background and one of three classes:
`normal` (no lesion), `nodule` (a small round bright blob) or `mass` (a larger lobulated blob).
The boolean mask marks the lesion's pixels, so a saliency map can be scored against it. The same
seed always gives a bit-identical sample; `make_dataset(n, seed)` uses seeds `seed .. seed + n - 1`.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

LABELS = ("normal", "nodule", "mass")
SIZE = 128

_NODULE_RADIUS = (3.0, 7.0)
_MASS_RADIUS = (11.0, 20.0)


@dataclass(frozen=True)
class LesionSample:
    """One image (float32 H×W in [0, 1]), its lesion mask (bool H×W) and its class index."""

    image: np.ndarray
    mask: np.ndarray
    label: int


def _smoothed_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """White noise blurred by a Gaussian of `sigma` pixels (via the FFT), scaled to unit std."""
    noise = rng.standard_normal((SIZE, SIZE))
    freq = np.fft.fftfreq(SIZE)
    f2 = freq[:, None] ** 2 + freq[None, :] ** 2
    smooth = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2.0 * np.pi**2 * sigma**2 * f2)).real
    return smooth / smooth.std()


def _background(rng: np.random.Generator) -> np.ndarray:
    """Tissue-like texture: coarse and fine smoothed noise, grain and a gentle linear gradient."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gradient = rng.uniform(0.0, 0.12) * (np.cos(angle) * xx + np.sin(angle) * yy)
    return (
        rng.uniform(0.32, 0.48)
        + gradient
        + rng.uniform(0.025, 0.05) * _smoothed_noise(rng, rng.uniform(8.0, 14.0))
        + rng.uniform(0.015, 0.035) * _smoothed_noise(rng, rng.uniform(1.5, 3.0))
        + 0.012 * rng.standard_normal((SIZE, SIZE))
    )


def _lesion(rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
    """The lesion's additive brightness and its mask; a nodule is round, a mass is lobulated."""
    low, high = _NODULE_RADIUS if label == 1 else _MASS_RADIUS
    radius = rng.uniform(low, high)
    margin = 1.3 * radius + 2.0
    cy, cx = rng.uniform(margin, SIZE - 1 - margin, size=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dist = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)

    boundary = np.full((SIZE, SIZE), radius)
    if label == 2:
        for k in range(2, 6):
            amplitude = rng.uniform(0.04, 0.22) / np.sqrt(k - 1)
            boundary = boundary + radius * amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rel = dist / boundary

    # A soft edge about a pixel wide, and a dome that is brightest at the centre.
    edge = 1.0 / (1.0 + np.exp((dist - boundary) / 0.8))
    dome = 1.0 - 0.35 * np.clip(rel, 0.0, 1.0) ** 2
    contrast = rng.uniform(0.22, 0.38) if label == 1 else rng.uniform(0.2, 0.34)
    brightness = contrast * edge * dome
    if label == 2:
        brightness = brightness * (1.0 + 0.1 * _smoothed_noise(rng, 2.0))
    return brightness, dist <= boundary


def make_sample(seed: int) -> LesionSample:
    """The sample for `seed`: the class is drawn uniformly, then the background and the lesion."""
    rng = np.random.default_rng(seed)
    label = int(rng.integers(len(LABELS)))
    image = _background(rng)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    if label != 0:
        brightness, mask = _lesion(rng, label)
        image = image + brightness
    return LesionSample(np.clip(image, 0.0, 1.0).astype(np.float32), mask, label)


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` samples from seeds `seed .. seed + n - 1`: images (N,H,W) float32, labels (N,) int64
    and masks (N,H,W) bool."""
    samples = [make_sample(seed + i) for i in range(n)]
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, SIZE, SIZE))
    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = np.stack([s.mask for s in samples]) if samples else np.zeros((0, SIZE, SIZE), bool)
    return images.astype(np.float32), labels, masks


def to_png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a H×W image, float in [0, 1] or uint8."""
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
