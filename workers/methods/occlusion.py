"""Occlusion (Zeiler & Fergus 2014): how much the target's logit drops when a patch is covered."""

import math

import torch

from schemas.methods.occlusion import OcclusionParams
from workers.methods.base import (
    Batch,
    ForwardOnlyMethod,
    MethodParameterError,
    Perturbations,
    target_columns,
)
from workers.methods.baselines import make_baseline
from workers.methods.registry import register


@register
class Occlusion(ForwardOnlyMethod[OcclusionParams]):
    """Each pixel: the mean, over the windows covering it, of logit(x) - logit(x with the window
    filled); signed.

    A `window`-sided square slides by `stride` from the top-left corner until it reaches the far
    edges, where it may be cut off (Captum's `Occlusion` places windows the same way). `fill` is the
    baseline of that name (`baselines.make_baseline`): "black" pixel value 0 (each channel's darkest
    pixel without the model's normalisation), "mean" each channel's mean, "blur" a heavily blurred
    copy of the image. The score is the target's logit, like the gradient methods'. A window larger
    than the image covers all of it.
    """

    def rows_per_pass(self, params: OcclusionParams) -> int:
        return params.batch_size

    def perturbations(self, image: Batch, params: OcclusionParams) -> Perturbations:
        pixels, targets, window, stride = image.inputs, image.targets, params.window, params.stride
        height, width = pixels.shape[2:]
        tops = _window_starts(height, min(window, height), stride)
        lefts = _window_starts(width, min(window, width), stride)
        corners = torch.cartesian_prod(tops, lefts).to(pixels.device)
        filled = make_baseline(params.fill, pixels, normalisation=image.normalisation)

        score = target_columns((yield pixels).float(), targets)
        drops = pixels.new_zeros((targets.shape[0], height * width), dtype=torch.float32)
        coverage = pixels.new_zeros(height * width, dtype=torch.float32)
        for chunk in corners.split(params.batch_size):
            covered = _covered(chunk, window, height, width)
            occluded = torch.where(covered[:, None], filled, pixels)
            drop = score - target_columns((yield occluded).float(), targets)
            flat = covered.flatten(1).float()
            drops += drop.T @ flat
            coverage += flat.sum(0)
        return (drops / coverage).view(-1, height, width)


def _window_starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Where windows start along one side: every `stride` pixels until one reaches the end."""
    if window < size and stride > window:
        raise MethodParameterError(
            "stride",
            f"occlusion: stride {stride} is larger than the window {window}, "
            "so some pixels would never be covered",
        )
    return torch.arange(math.ceil((size - window) / stride) + 1) * stride


def _covered(corners: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B, H, W) booleans: the pixels inside the window at each top-left corner (B, 2)."""
    rows = torch.arange(height, device=corners.device)
    columns = torch.arange(width, device=corners.device)
    top, left = corners[:, :1], corners[:, 1:]
    in_rows = (rows >= top) & (rows < top + window)
    in_columns = (columns >= left) & (columns < left + window)
    return in_rows[:, :, None] & in_columns[:, None, :]
