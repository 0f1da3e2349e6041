"""Integrated Gradients (Sundararajan et al. 2017): gradients integrated along the straight path
from a baseline to the input."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from schemas.methods.integrated_gradients import IntegratedGradientsParams
from workers.deadline import check_deadline
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    MapWarning,
    copies_per_pass,
    input_gradient_and_logits,
)
from workers.methods.baselines import make_baseline
from workers.methods.registry import register

NOT_CONVERGED = MapWarning(
    "not_converged",
    "the completeness gap or the convergence figure stayed above `tolerance` at the most steps "
    "`max_steps` allows",
)


@register
class IntegratedGradients(AttributionMethod[IntegratedGradientsParams]):
    """(x − x0) · ∫₀¹ ∂S/∂x(x0 + α(x − x0)) dα for the target logit S, summed over channels; signed.

    x0 is the `baseline` (see `workers.methods.baselines`); the integral is the trapezoid rule on
    `steps` equal intervals: the `steps + 1` points α = i / steps (Captum's `riemann_trapezoid`
    with `steps + 1` points). The rule nests: on every other point it is the rule on half the
    intervals, so two figures come without another pass. The completeness gap, how far the map's
    sum misses S(x) − S(x0) (read from the forward passes of the path's end points, so it costs
    no pass of its own); and the convergence, the largest difference between the map at
    `steps` and at half as many, as a share of the map's range. A ReLU network's kinks along the
    path keep either at a percent or more for some images at 50 steps, and a small gap alone
    does not make a converged map. So an image whose gap or convergence exceeds `tolerance` is
    integrated on twice the intervals (only the new midpoints are computed), until both hold or
    `max_steps` is reached; one still above then carries a `not_converged` warning. The figures
    and the steps reached are in `AttributionMap.checks`.
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
        unsettled = refined.unsettled(params.tolerance).tolist()
        return AttributionMap(
            refined.attributions.sum(dim=1).to(torch.float32),
            signed=params.is_signed(),
            checks={
                "completeness_gap": refined.gaps,
                "steps": refined.steps.to(torch.float32),
                "convergence": refined.convergence,
            },
            warnings=tuple(NOT_CONVERGED if row else None for row in unsettled),
        )


@dataclass(frozen=True)
class RefinedAttributions:
    """Attributions shaped like the inputs, and per sample its completeness gap, its convergence
    (NaN where the steps were odd and never doubled) and its step count."""

    attributions: torch.Tensor
    gaps: torch.Tensor
    steps: torch.Tensor
    convergence: torch.Tensor

    def unsettled(self, tolerance: float) -> torch.Tensor:
        """Each sample's gap or convergence above `tolerance` (an unknown convergence is not)."""
        return (self.gaps > tolerance) | (self.convergence > tolerance)


@dataclass(frozen=True)
class PathSums:
    """The trapezoid rule's sums of path gradients, shaped like the inputs: half the two end
    points' gradients, and the interior points' at the even and at the odd indices of the grid
    of equal intervals. Doubling the intervals makes the old points the even ones."""

    ends: torch.Tensor
    even: torch.Tensor
    odd: torch.Tensor

    def integral(self, intervals: int, rows: torch.Tensor) -> torch.Tensor:
        return (self.ends[rows] + self.even[rows] + self.odd[rows]) / intervals

    def half_integral(self, intervals: int, rows: torch.Tensor) -> torch.Tensor | None:
        """The rule on every other point (half the intervals); None for an odd count."""
        if intervals % 2:
            return None
        return (self.ends[rows] + self.even[rows]) * (2 / intervals)

    def double(self, rows: torch.Tensor, midpoints: torch.Tensor) -> None:
        """The rows' sums on twice the intervals, given the new midpoints' gradient sum."""
        self.even[rows] += self.odd[rows]
        self.odd[rows] = midpoints


def refined_integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    params: IntegratedGradientsParams,
) -> RefinedAttributions:
    """The trapezoid rule at `params.steps`, then on 2×, 4×, … the intervals (at most
    `max_steps`) for the samples whose gap or convergence is still above `tolerance`.

    A sample's result depends only on its own row, so a batch equals single-image calls. Only
    samples refined every time are still unsettled, so those refined share one step count.
    """
    steps = params.steps
    rows = torch.arange(len(targets), device=inputs.device)
    difference = inputs.detach() - baselines
    path = _Path(model, baselines, difference, targets, difference.new_empty(len(rows)).double())
    ends, even, odd = path.gradient_sums(rows, *_first_points(steps))
    sums = PathSums(ends, even, odd)
    refined = RefinedAttributions(
        difference * sums.integral(steps, rows),
        torch.empty(len(rows), dtype=torch.float64, device=inputs.device),
        torch.full((len(rows),), steps, dtype=torch.int64, device=inputs.device),
        torch.empty(len(rows), dtype=torch.float64, device=inputs.device),
    )
    _measure(refined, rows, path, sums, steps)
    while 2 * steps <= params.max_steps:
        todo = refined.unsettled(params.tolerance).nonzero()[:, 0]
        if len(todo) == 0:
            break
        (midpoints,) = path.gradient_sums(todo, *_midpoints(steps))
        steps *= 2
        sums.double(todo, midpoints)
        refined.attributions[todo] = difference[todo] * sums.integral(steps, todo)
        refined.steps[todo] = steps
        _measure(refined, todo, path, sums, steps)
    return RefinedAttributions(
        refined.attributions, refined.gaps.float(), refined.steps, refined.convergence.float()
    )


def _measure(
    refined: RefinedAttributions, rows: torch.Tensor, path: "_Path", sums: PathSums, steps: int
) -> None:
    """The rows' gaps and convergence at `steps`, written into `refined`."""
    attributions = refined.attributions[rows]
    refined.gaps[rows] = completeness_gaps(attributions, path.change[rows])
    half = sums.half_integral(steps, rows)
    if half is None:
        refined.convergence[rows] = float("nan")
        return
    half_map = (path.difference[rows] * half).sum(dim=1)
    refined.convergence[rows] = map_convergence(attributions.sum(dim=1), half_map)


def map_convergence(full: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Per sample, max |full − half| / (max full − min full) of (N, H, W) maps, in float64; 0
    for two equal maps, the range counted as at least the smallest normal float64."""
    full, half = full.double().flatten(1), half.double().flatten(1)
    spread = (full.amax(dim=1) - full.amin(dim=1)).clamp(min=torch.finfo(torch.float64).tiny)
    return (full - half).abs().amax(dim=1) / spread


def completeness_gaps(attributions: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """Per sample, |Σ attributions − change| / |change| in float64, the change counted as at
    least 1e-6 in magnitude."""
    total = attributions.double().flatten(1).sum(dim=1)
    return (total - change).abs() / change.abs().clamp(min=1e-6)


def _first_points(steps: int) -> tuple[list[float], list[float], list[int], int]:
    """The `steps + 1` points of the first pass: alphas, trapezoid weights (½ at the ends) and
    the sum each goes to (0: ends, 1: even interior, 2: odd interior), of 3 sums."""
    alphas = [i / steps for i in range(steps + 1)]
    weights = [0.5 if i in (0, steps) else 1.0 for i in range(steps + 1)]
    groups = [0 if i in (0, steps) else 1 + i % 2 for i in range(steps + 1)]
    return alphas, weights, groups, 3


def _midpoints(steps: int) -> tuple[list[float], list[float], list[int], int]:
    """The midpoints of `steps` equal intervals, each of weight 1, into one sum."""
    return [(2 * j + 1) / (2 * steps) for j in range(steps)], [1.0] * steps, [0] * steps, 1


@dataclass(frozen=True)
class _Path:
    """The straight paths baselines + α · difference of a batch, its targets, and the change
    of each target logit from baseline to input (float64), which the first pass over the end
    points fills in."""

    model: nn.Module
    baselines: torch.Tensor
    difference: torch.Tensor
    targets: torch.Tensor
    change: torch.Tensor

    def gradient_sums(
        self,
        rows: torch.Tensor,
        alphas: Sequence[float],
        weights: Sequence[float],
        groups: Sequence[int],
        count: int,
    ) -> list[torch.Tensor]:
        """For the given rows, `count` weighted sums of the target's input gradient at the path
        points `alphas`, each point into the sum `groups` names; shaped like those rows.

        The points go through the model a few at a time (`copies_per_pass`), where Captum puts
        every point of every sample in one batch.
        """
        baselines, difference = self.baselines[rows], self.difference[rows]
        targets = self.targets[rows]
        sums = [torch.zeros_like(difference) for _ in range(count)]
        ends: dict[float, torch.Tensor] = {}
        points_per_pass = copies_per_pass(difference)
        for start in range(0, len(alphas), points_per_pass):
            check_deadline()
            chunk = slice(start, start + points_per_pass)
            alpha = difference.new_tensor(alphas[chunk]).view(-1, 1, 1, 1, 1)
            path = (baselines + alpha * difference).flatten(0, 1)
            gradients, logits = input_gradient_and_logits(
                self.model, path, targets.repeat(alpha.shape[0])
            )
            gradients = gradients.view(-1, *difference.shape)
            logits = logits.view(-1, len(rows))
            for point, (weight, group) in enumerate(
                zip(weights[chunk], groups[chunk], strict=True)
            ):
                sums[group] += weight * gradients[point]
                if alphas[start + point] in (0.0, 1.0):
                    ends[alphas[start + point]] = logits[point]
        if len(ends) == 2:
            # The path's own end points: S(x0) and S(x0 + (x − x0)), which the integral spans.
            self.change[rows] = (ends[1.0] - ends[0.0]).double()
        return sums
