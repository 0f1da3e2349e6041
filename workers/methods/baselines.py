"""Reference inputs ("baselines") for path and difference methods, in normalised input space.

Methods receive inputs already normalised as (pixel - mean) / std per channel, and a baseline
lives in that same space. "black" is the pixel value 0 and "uniform" is noise uniform over pixel
values [0, 1]; both are exact when the caller gives the model's `Normalisation` (the worker
always does). Without it, black is each image's darkest value per channel
(`base.darkest_pixels`) and the noise spans each image's darkest to brightest value per channel:
normalisation is an increasing affine map per channel, so these equal the exact baselines for any
image that holds black and white pixels. "mean" and "blur" are linear in the input and need no
normalisation.
"""

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from workers.methods.base import Normalisation, darkest_pixels

BaselineKind = Literal["black", "blur", "mean", "uniform"]
BASELINE_KINDS: tuple[str, ...] = get_args(BaselineKind)

# σ of the blur baseline as a fraction of the image's longer side: wide enough to remove edges and
# texture (the features a map should find), as in Sturmfels et al., Distill 2020.
BLUR_SIGMA_FRACTION = 0.05


def make_baseline(
    kind: str,
    inputs: torch.Tensor,
    *,
    seed: int = 0,
    normalisation: Normalisation | None = None,
) -> torch.Tensor:
    """The baseline of `kind` for each sample of `inputs` (N, C, H, W), shaped like it.

    - "black": every pixel 0, i.e. (0 - mean) / std per channel.
    - "mean": each sample's per-channel mean over its pixels.
    - "blur": each sample blurred by a Gaussian of σ = 5 % of its longer side (reflected edges).
    - "uniform": pixel noise uniform in [0, 1], normalised; drawn once from a CPU generator seeded
      with `seed` and shared by every sample, so a row's baseline does not depend on its batch.

    Without `normalisation`, black and the noise's range come from each image (module
    docstring). Same dtype and device as `inputs`; never requires grad. Raises ValueError for an
    unknown kind or a normalisation with another channel count.
    """
    inputs = inputs.detach()
    if kind == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    if kind == "blur":
        return gaussian_blur(inputs, BLUR_SIGMA_FRACTION * max(inputs.shape[2:]))
    if kind not in ("black", "uniform"):
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINE_KINDS)}")
    black, white = _black_and_white(inputs, normalisation)
    if kind == "black":
        return black.expand_as(inputs).clone()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(inputs.shape[1:], generator=generator, dtype=torch.float32)
    noise = noise.to(device=inputs.device, dtype=inputs.dtype)
    return (black + noise[None] * (white - black)).expand_as(inputs).clone()


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of `inputs` (N, C, H, W) blurred by a separable Gaussian of `sigma` pixels.

    The kernel spans ±3σ, cut to what reflect padding allows on small images; it sums to 1, so
    blurring commutes with the per-channel normalisation.
    """
    channels, height, width = inputs.shape[1:]
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if radius < 1:
        return inputs.clone()
    offsets = torch.arange(-radius, radius + 1, device=inputs.device, dtype=inputs.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(inputs, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _black_and_white(
    inputs: torch.Tensor, normalisation: Normalisation | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixels 0 and 1, (1, C, 1, 1); per image, (N, C, 1, 1), when the
    normalisation is not given."""
    if normalisation is None:
        return darkest_pixels(inputs), inputs.amax(dim=(2, 3), keepdim=True)
    return normalisation.normalised(0.0, inputs), normalisation.normalised(1.0, inputs)
