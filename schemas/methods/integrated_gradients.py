"""Integrated Gradients' parameters and catalogue entry."""

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import Baseline, MethodParams, Seed, Workload, register_method


@register_method
class IntegratedGradientsParams(MethodParams):
    """Integrated Gradients: the path integral of gradients from a baseline."""

    method = "integrated_gradients"
    title = "Integrated Gradients"
    summary = (
        "Gradients integrated along the straight path from a baseline to the input (the "
        "trapezoid rule on `steps` equal intervals), times the difference; sums to the change "
        "of the target logit. Where the sum misses that change, or the map differs from the one "
        "on every other point (half the steps), by more than `tolerance`, the intervals are "
        "halved for that image, up to `max_steps`; the gap and convergence reached are reported."
    )
    reference = "Sundararajan et al., ICML 2017"
    cost = (
        "`steps` + 1 forward + backward to the input (the end points' forwards give the "
        "completeness check its logits); each doubling adds as many as the last step count "
        "(the new midpoints), for the images that need it"
    )
    signed = True

    steps: int = Field(
        default=50,
        ge=2,
        le=1024,
        description="intervals of the first pass (`steps` + 1 points); an even count also gives "
        "the convergence figure at once",
    )
    tolerance: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest completeness gap |Σ map − (f(x) − f(baseline))| / "
        "|f(x) − f(baseline)|, and largest difference between the map and the one on half the "
        "steps as a share of its range, accepted before the steps are doubled",
    )
    max_steps: int = Field(
        default=400,
        ge=2,
        le=4096,
        description="the most steps refinement may reach; at or below `steps`, no refinement",
    )
    baseline: Baseline = "black"
    seed: Seed = Field(default=0, description="for the uniform-noise baseline")

    @override
    def passes(self, work: Workload) -> int:
        # Every refinement adds the midpoints of the last intervals, at worst up to `max_steps`.
        points, steps = self.steps + 1, self.steps
        while 2 * steps <= self.max_steps:
            points += steps
            steps *= 2
        return 2 * points * work.targets
