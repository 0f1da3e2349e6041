"""How far an attribution map deserves trust: faithfulness, localisation and a sanity check.

- Deletion and insertion (Petsiuk et al., BMVC 2018, "RISE"): the map's pixels are removed
  (replaced by a baseline) or inserted (into a blurred copy) most relevant first, in
  `EVALUATION_STEPS` equal steps; the area under the target's softmax probability over the fraction
  of pixels changed is taken by the trapezoid rule. `top10_drop` is the probability lost at the
  deletion curve's first step (the top 10 % removed).
- Pointing game (Zhang et al., IJCV 2018, "Top-down neural attention by excitation backprop"): a
  hit when the map's maximum lies within `tolerance` pixels of the lesion.
- Relevance mass (Arras et al., Information Fusion 2022, "CLEVR-XAI"): the share of the map's
  positive relevance inside the lesion, against the lesion's share of the image.
- Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018): Spearman's rank
  correlation between a map of the trained model and of the model with its top layers re-drawn,
  one layer more at each cut, from the head down.

Maps are (N, H, W) at the model's input size; inputs are normalised (N, C, H, W). Every forward
pass is batched, at most `max_batch` images a call.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from schemas.evaluation import EVALUATION_STEPS, TOP_SHARE, Evaluation
from schemas.methods import MethodParams
from schemas.models import OutputActivation
from workers.methods.base import Normalisation
from workers.methods.baselines import BLUR_SIGMA_FRACTION, gaussian_blur, make_baseline
from workers.predictions import class_probabilities

Forward = Callable[[torch.Tensor], torch.Tensor]
"""A model's (N, classes) logits for a normalised batch."""

MAX_BATCH = 256
POINTING_TOLERANCE = 3
"""Pixels around the lesion that still count as a hit (Zhang et al. use 15 at 224 px and more;
the demo images are 128 px and nodules are 3 to 7 px in radius)."""


def fill_kind(params: MethodParams) -> str:
    """The baseline a method's deletion curve fills removed pixels with: its own `baseline` or
    `fill` where it has one (DeepLIFT, Integrated Gradients, occlusion), else black."""
    for name in ("baseline", "fill"):
        kind = getattr(params, name, None)
        if isinstance(kind, str):
            return kind
    return "black"


def fill_images(
    inputs: torch.Tensor, params: MethodParams, normalisation: Normalisation | None
) -> torch.Tensor:
    """The images removed pixels take their values from, one per input."""
    seed = getattr(params, "seed", 0)
    return make_baseline(fill_kind(params), inputs, seed=seed, normalisation=normalisation)


def blurred(inputs: torch.Tensor) -> torch.Tensor:
    """The insertion curve's start: each input blurred as the "blur" baseline is."""
    return gaussian_blur(inputs.detach(), BLUR_SIGMA_FRACTION * max(inputs.shape[2:]))


def relevance_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's place (N, H·W) when the map's pixels are sorted most relevant (highest)
    first; ties keep the pixels' row-major order."""
    flat = maps.detach().flatten(1).double()
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def step_counts(pixels: int, steps: int = EVALUATION_STEPS) -> list[int]:
    """How many pixels each curve point has changed: round(k / steps · pixels), k = 0..steps."""
    return [round(k * pixels / steps) for k in range(steps + 1)]


def curves(  # noqa: PLR0913 - the curves' inputs, spelled out
    forward: Forward,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    fill: torch.Tensor,
    *,
    steps: int = EVALUATION_STEPS,
    max_batch: int = MAX_BATCH,
    activation: OutputActivation = "softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deletion and insertion curves (N, steps + 1), float64: the target's probability (under
    the model's output `activation`) after each step, point 0 being the untouched (deletion) or
    fully blurred (insertion) input."""
    ranks = relevance_ranks(maps).view(maps.shape[0], 1, *maps.shape[1:])
    counts = step_counts(ranks[0].numel(), steps)
    start = blurred(inputs)

    def perturbed(row: int) -> torch.Tensor:
        changed = torch.stack([ranks[row] < n for n in counts])
        deleted = torch.where(changed, fill[row], inputs[row])
        inserted = torch.where(changed, inputs[row], start[row])
        return torch.cat([deleted, inserted])

    rows_per_call = max(1, max_batch // (2 * len(counts)))
    probabilities = []
    for first in range(0, inputs.shape[0], rows_per_call):
        rows = range(first, min(first + rows_per_call, inputs.shape[0]))
        batch = torch.cat([perturbed(row) for row in rows])
        row_targets = targets[list(rows)].repeat_interleave(2 * len(counts))
        logits = forward(batch).double()
        scores = class_probabilities(logits, activation)
        chosen = scores.gather(1, row_targets.to(logits.device)[:, None])
        probabilities.append(chosen.view(len(rows), 2, len(counts)).cpu())
    both = torch.cat(probabilities)
    return both[:, 0], both[:, 1]


def area(curve: torch.Tensor) -> torch.Tensor:
    """The trapezoid-rule area under curves (N, steps + 1) over [0, 1], evenly spaced."""
    steps = curve.shape[1] - 1
    return (curve[:, 1:] + curve[:, :-1]).sum(dim=1) / (2 * steps)


def evaluate(  # noqa: PLR0913 - what a map's evaluation needs, spelled out
    forward: Forward,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    params: MethodParams,
    normalisation: Normalisation | None = None,
    *,
    activation: OutputActivation = "softmax",
) -> list[Evaluation]:
    """Each map's deletion AUC, insertion AUC and top-10 % drop, in `EVALUATION_PASSES`
    batched forward passes per map, of the target's probability under `activation`."""
    fill = fill_images(inputs, params, normalisation)
    deletion, insertion = curves(forward, inputs, targets, maps, fill, activation=activation)
    top = round(TOP_SHARE * EVALUATION_STEPS)
    drops = (deletion[:, 0] - deletion[:, top]).tolist()
    return [
        Evaluation(deletion_auc=d, insertion_auc=i, top10_drop=drop)
        for d, i, drop in zip(area(deletion).tolist(), area(insertion).tolist(), drops, strict=True)
    ]


def pointing_hits(
    maps: np.ndarray, masks: np.ndarray, tolerance: int = POINTING_TOLERANCE
) -> np.ndarray:
    """Whether each map's maximum (the first, row-major, where several tie) lies within
    `tolerance` pixels (Chebyshev distance) of its mask's pixels: (N,) bool."""
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, maps.shape[1:])
    hits = np.zeros(len(maps), dtype=bool)
    for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
        window = masks[
            i, max(0, y - tolerance) : y + tolerance + 1, max(0, x - tolerance) : x + tolerance + 1
        ]
        hits[i] = bool(window.any())
    return hits


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The share of each map's positive relevance that falls inside its mask, (N,) float64; NaN
    for a map without positive relevance."""
    positive = np.clip(maps.reshape(len(maps), -1).astype(np.float64), 0.0, None)
    inside = (positive * masks.reshape(len(masks), -1)).sum(axis=1)
    total = positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def lesion_share(masks: np.ndarray) -> np.ndarray:
    """Each mask's share of the image's pixels, (N,)."""
    return masks.reshape(len(masks), -1).mean(axis=1)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps (N,), ties given their average rank; NaN
    where a map is constant."""
    # Imported here: scipy.stats takes about a second to import, and only the quality
    # benchmark's randomisation check ranks maps, not a worker.
    from scipy.stats import rankdata

    a = rankdata(first.reshape(len(first), -1), axis=1)
    b = rankdata(second.reshape(len(second), -1), axis=1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(axis=1) / norm, np.nan)


def randomisation_cuts(model: nn.Module) -> list[str]:
    """The layers the cascading randomisation re-draws, top first: every convolution and linear
    layer, in the reverse of their order in the model."""
    layers = [
        name for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    return layers[::-1]


@contextmanager
def randomised(model: nn.Module, layers: list[str], seed: int = 0) -> Iterator[nn.Module]:
    """`model` with the weights and biases of `layers` re-drawn by their own initialiser, the
    generator seeded with `seed` before each (as Quantus's cascade does); the originals are back
    on exit.

    The re-drawn values go into new tensors: a method that caches a rewrite of the model (LRP's
    BatchNorm-folded form) rebuilds it when the model's tensors change, not when their values
    do in place.
    """
    modules = dict(model.named_modules())
    originals = {name: dict(modules[name].named_parameters(recurse=False)) for name in layers}
    generator_state = torch.random.get_rng_state()
    try:
        with torch.no_grad():
            for name in layers:
                for parameter_name, parameter in originals[name].items():
                    fresh = nn.Parameter(parameter.detach().clone(), requires_grad=False)
                    setattr(modules[name], parameter_name, fresh)
                torch.manual_seed(seed)
                modules[name].reset_parameters()  # type: ignore[operator]
        yield model
    finally:
        torch.random.set_rng_state(generator_state)
        for name in layers:
            for parameter_name, parameter in originals[name].items():
                setattr(modules[name], parameter_name, parameter)
