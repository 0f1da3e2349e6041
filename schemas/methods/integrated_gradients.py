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
        "Gradients integrated along the straight path from a baseline to the input "
        "(Gauss-Legendre quadrature), times the difference; sums to the change of the target "
        "logit. Where the sum misses that change by more than `tolerance`, the steps are "
        "doubled for that image, up to `max_steps`; the gap reached is reported."
    )
    reference = "Sundararajan et al., ICML 2017"
    cost = (
        "2 forward, then `steps` forward + backward to the input; each doubling adds twice the "
        "last step count, for the images that need it"
    )
    signed = True

    steps: int = Field(default=50, ge=2, le=1024, description="quadrature nodes of the first pass")
    tolerance: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest completeness gap |Σ map − (f(x) − f(baseline))| / "
        "|f(x) − f(baseline)| accepted before the steps are doubled",
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
        # Every refinement doubles the steps and integrates again, at worst up to `max_steps`.
        nodes, steps = self.steps, self.steps
        while 2 * steps <= self.max_steps:
            steps *= 2
            nodes += steps
        return 2 + 2 * nodes * work.targets
