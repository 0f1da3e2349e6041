"""SmoothGrad's parameters and catalogue entry."""

from typing import Literal

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import (
    PARAMS_BY_METHOD,
    MethodParams,
    Seed,
    Workload,
    randomisation_caveat,
    register_method,
)

SmoothGradBase = Literal["saliency", "integrated_gradients", "guided_backprop", "deeplift"]
"""The gradient methods SmoothGrad averages; each is signed when SmoothGrad's `abs` is false."""


@register_method
class SmoothGradParams(MethodParams):
    """SmoothGrad: a gradient method averaged over noisy copies of the input."""

    method = "smoothgrad"
    title = "SmoothGrad"
    summary = (
        "A gradient method's map (saliency by default) averaged over copies of the input with "
        "Gaussian noise; unsigned unless abs is false."
    )
    reference = "Smilkov et al., ICML Workshop 2017"
    cost = "`samples` × the base method's passes"
    signed = False
    caveats = (
        randomisation_caveat(
            0.64,
            "Averaging |gradient| over noisy copies of the image keeps the image's own edges after"
            " the head is re-drawn; it passes once the last convolution is re-drawn too.",
        ),
    )

    samples: int = Field(default=25, ge=1, le=256)
    noise: float = Field(default=0.15, ge=0.0, le=1.0, description="σ as a fraction of the range")
    base: SmoothGradBase = "saliency"
    abs: bool = Field(default=True, description="average |attribution| (unsigned) or signed")
    seed: Seed = 0

    @override
    def is_signed(self) -> bool:
        return not self.abs

    def base_params(self) -> MethodParams:
        """The base method's parameters as SmoothGrad runs it: its defaults, this method's `abs`
        where it has one, and integrated_gradients unrefined (the noise average, not each copy,
        is what must be accurate: a `max_steps` at its `steps` turns refinement off)."""
        params = PARAMS_BY_METHOD[self.base]
        overrides: dict[str, object] = {}
        if "abs" in params.model_fields:
            overrides["abs"] = self.abs
        if "max_steps" in params.model_fields and "steps" in params.model_fields:
            overrides["max_steps"] = params.model_fields["steps"].default
        return params.model_validate(overrides)

    @override
    def passes(self, work: Workload) -> int:
        return self.samples * self.base_params().passes(work)
