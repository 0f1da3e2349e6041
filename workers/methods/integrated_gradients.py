"""Integrated Gradients (Sundararajan et al. 2017): gradients integrated along the straight path
from a baseline to the input."""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from schemas.methods.integrated_gradients import IntegratedGradientsParams
from workers.deadline import check_deadline
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    copies_per_pass,
    input_gradient,
)
from workers.methods.baselines import make_baseline
from workers.methods.registry import register


@register
class IntegratedGradients(AttributionMethod[IntegratedGradientsParams]):
    """(x − x0) · ∫₀¹ ∂S/∂x(x0 + α(x − x0)) dα for the target logit S, summed over channels; signed.

    x0 is the `baseline` (see `workers.methods.baselines`); the integral is a `steps`-node
    Gauss–Legendre quadrature on [0, 1], Captum's default. The map sums to S(x) − S(x0)
    (completeness) within the quadrature's error, which a ReLU network's kinks along the path
    keep at a percent or two for some images at 50 steps. So each image's completeness gap is
    measured, and the images whose gap exceeds `tolerance` are integrated again with twice the
    steps, until it holds or `max_steps` is reached. The gap and the steps reached are reported
    in `AttributionMap.checks`.
    """

    def attribute(self, batch: Batch, params: IntegratedGradientsParams) -> AttributionMap:
        baselines = make_baseline(
            params.baseline, batch.inputs, seed=params.seed, normalisation=batch.normalisation
        )
        refined = refined_integrated_gradients(
            batch.model,
            batch.inputs,
            baselines,
            batch.targets,
            params,
        )
        return AttributionMap(
            refined.attributions.sum(dim=1).to(torch.float32),
            signed=params.is_signed(),
            checks={"completeness_gap": refined.gaps, "steps": refined.steps.to(torch.float32)},
        )


@dataclass(frozen=True)
class RefinedAttributions:
    """Attributions shaped like the inputs, each sample's completeness gap and its step count."""

    attributions: torch.Tensor
    gaps: torch.Tensor
    steps: torch.Tensor


def refined_integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    params: IntegratedGradientsParams,
) -> RefinedAttributions:
    """`integrated_gradients` at `params.steps`, then again at 2×, 4×, … the steps (at most
    `max_steps`) for the samples whose completeness gap is still above `tolerance`.

    A sample's result depends only on its own row, so a batch equals single-image calls.
    """
    steps, tolerance, max_steps = params.steps, params.tolerance, params.max_steps
    rows = torch.arange(len(targets), device=inputs.device)
    with torch.no_grad():
        change = (model(inputs)[rows, targets] - model(baselines)[rows, targets]).double()
    attributions = integrated_gradients(model, inputs, baselines, targets, steps)
    gaps = completeness_gaps(attributions, change)
    used = torch.full_like(gaps, steps, dtype=torch.int64)
    while 2 * steps <= max_steps:
        todo = (gaps > tolerance).nonzero()[:, 0]
        if len(todo) == 0:
            break
        steps *= 2
        attributions[todo] = integrated_gradients(
            model, inputs[todo], baselines[todo], targets[todo], steps
        )
        gaps[todo] = completeness_gaps(attributions[todo], change[todo])
        used[todo] = steps
    return RefinedAttributions(attributions, gaps.float(), used)


def completeness_gaps(attributions: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """Per sample, |Σ attributions − change| / |change| in float64, the change counted as at
    least 1e-6 in magnitude."""
    total = attributions.double().flatten(1).sum(dim=1)
    return (total - change).abs() / change.abs().clamp(min=1e-6)


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Per-pixel, per-channel attributions, shaped like `inputs`, from `baselines` (same shape).

    The path points go through the model a few at a time (`copies_per_pass`), where Captum puts
    every point of every sample in one batch.
    """
    nodes, weights = gauss_legendre(steps)
    alphas = inputs.new_tensor(nodes).view(-1, 1, 1, 1, 1)
    step_weights = inputs.new_tensor(weights).view(-1, 1, 1, 1, 1)
    difference = inputs.detach() - baselines
    integral = torch.zeros_like(difference)
    points_per_pass = copies_per_pass(inputs)
    for start in range(0, len(nodes), points_per_pass):
        check_deadline()
        alpha = alphas[start : start + points_per_pass]
        path = (baselines + alpha * difference).flatten(0, 1)
        gradients = input_gradient(model, path, targets.repeat(alpha.shape[0]))
        weighted = step_weights[start : start + points_per_pass] * gradients.view(-1, *inputs.shape)
        integral += weighted.sum(dim=0)
    return difference * integral


@lru_cache(maxsize=16)
def gauss_legendre(steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The nodes in (0, 1), ascending, and weights (summing to 1) of `steps`-point
    Gauss–Legendre quadrature on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return tuple(((nodes + 1) / 2).tolist()), tuple((weights / 2).tolist())
