"""Layer-wise Relevance Propagation's parameters and catalogue entry."""

from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import (
    MethodParams,
    Need,
    Workload,
    randomisation_caveat,
    register_method,
)

# Well inside float32, in which relevance is computed; useful values are far smaller.
MAX_LRP_EPSILON = 1e3
MAX_LRP_ALPHA = 1e3

CompositeName = Literal["epsilon", "epsilon_plus", "alpha_beta"]
FirstLayerRule = Literal["zbox", "flat", "same"]


@register_method
class LrpParams(MethodParams):
    """Layer-wise Relevance Propagation with a named rule composite."""

    method = "lrp"
    title = "Layer-wise Relevance Propagation"
    summary = (
        "The target logit redistributed layer by layer down to the pixels by a rule composite "
        "(ε, ε+ or αβ; z-box, flat or the same rule at the input layer), with BatchNorm folded "
        "and residual sums split in proportion; relevance sums to about the logit."
    )
    reference = "Bach et al., PLOS ONE 2015; Montavon et al., 2019"
    cost = "1 forward (+1 per rule share) + 1 backward to the input"
    signed = True
    caveats = (
        randomisation_caveat(
            0.64,
            "The default composite's z+ rule passes only positive contributions through the "
            "convolutions, and such rules give maps that depend little on the top layers (Sixt, "
            "Granz and Landgraf, ICML 2020); the composite 'epsilon' passes the check.",
        ),
    )
    needs: ClassVar[frozenset[Need]] = frozenset(
        {"gradients", "canonical_form", "piecewise_linear"}
    )

    composite: CompositeName = Field(
        default="epsilon_plus",
        description="ε everywhere; ε+: z+ on convolutions, ε on dense layers; αβ on convolutions",
    )
    first_layer: FirstLayerRule = Field(default="zbox", description="rule at the input layer")
    epsilon: float = Field(
        default=1e-6,
        ge=0.0,
        le=MAX_LRP_EPSILON,
        description="stabiliser added to every pre-activation's magnitude (ε rules)",
    )
    alpha: float = Field(default=2.0, ge=1.0, le=MAX_LRP_ALPHA, description="β = α − 1")

    @override
    def passes(self, work: Workload) -> int:
        shares = 2 if self.composite == "alpha_beta" else 1
        return (2 + shares) * work.targets
