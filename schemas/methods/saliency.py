"""Saliency's parameters and catalogue entry."""

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import MethodParams, register_method


@register_method
class SaliencyParams(MethodParams):
    """Vanilla gradient of the target logit with respect to the input."""

    method = "saliency"
    title = "Saliency (vanilla gradient)"
    summary = "Gradient of the target logit with respect to the input pixels."
    reference = "Simonyan et al., ICLR Workshop 2014"
    cost = "1 forward + 1 backward to the input"
    signed = False

    abs: bool = Field(
        default=True, description="absolute gradient (max over channels) or signed (sum)"
    )

    @override
    def is_signed(self) -> bool:
        return not self.abs
