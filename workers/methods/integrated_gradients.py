"""Integrated Gradients (Sundararajan et al. 2017): gradients integrated along the straight path
from a baseline to the input."""

from collections.abc import Mapping
from functools import lru_cache
from typing import cast

import numpy as np
import torch
from torch import nn

from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    copies_per_pass,
    input_gradient,
)
from workers.methods.baselines import make_baseline


class IntegratedGradients(AttributionMethod):
    """(x − x0) · ∫₀¹ ∂S/∂x(x0 + α(x − x0)) dα for the target logit S, summed over channels; signed.

    x0 is the `baseline` (see `workers.methods.baselines`); the integral is a `steps`-node
    Gauss–Legendre quadrature on [0, 1], Captum's default. The map sums to about S(x) − S(x0)
    (completeness), within the quadrature's error.
    """

    id = "integrated_gradients"

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Mapping[str, object],
    ) -> AttributionMap:
        baselines = make_baseline(
            cast(str, params["baseline"]), inputs, seed=cast(int, params["seed"])
        )
        attributions = integrated_gradients(
            model, inputs, baselines, targets, cast(int, params["steps"])
        )
        return AttributionMap(attributions.sum(dim=1).to(torch.float32), signed=True)


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
    for start in range(0, steps, points_per_pass):
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
