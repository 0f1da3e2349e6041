"""DeepLIFT's parameters and catalogue entry."""

from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import Baseline, MethodParams, Need, Seed, Workload, register_method


@register_method
class DeepLiftParams(MethodParams):
    """DeepLIFT with the Rescale rule."""

    method = "deeplift"
    title = "DeepLIFT (Rescale)"
    summary = (
        "Difference from a baseline times multipliers carried back by the Rescale rule "
        "(Δout/Δin at each ReLU, winner-takes-the-difference at max-pools); summed over "
        "channels, the map adds up to the target logit's change from the baseline. Works on "
        "models that reuse activation modules."
    )
    reference = "Shrikumar et al., ICML 2017"
    cost = "1 forward + 1 backward to the input, on the input and baseline together"
    signed = True
    needs: ClassVar[frozenset[Need]] = frozenset(
        {"gradients", "canonical_form", "piecewise_linear"}
    )

    baseline: Baseline = "black"
    seed: Seed = Field(default=0, description="for the uniform-noise baseline")

    @override
    def passes(self, work: Workload) -> int:
        return 4 * work.targets
