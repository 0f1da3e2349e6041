"""Guided backpropagation's parameters and catalogue entry."""

from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import MethodParams, Need, register_method


@register_method
class GuidedBackpropParams(MethodParams):
    """Guided backpropagation: only positive gradients through positive activations."""

    method = "guided_backprop"
    title = "Guided Backpropagation"
    summary = (
        "Gradient of the target logit where every ReLU passes back only positive gradient, and "
        "only where its input was positive; sharp, fine-grained, weakly class-discriminative."
    )
    reference = "Springenberg et al., ICLR Workshop 2015"
    cost = "1 forward + 1 backward to the input"
    signed = False
    needs: ClassVar[frozenset[Need]] = frozenset({"gradients", "relu"})
    caveats: ClassVar[tuple[str, ...]] = (
        "Fails the model-parameter randomisation check (Adebayo et al., NeurIPS 2018, "
        "'Sanity Checks for Saliency Maps'): the map stays much the same when the model's top "
        "layers are randomised, so it shows the image's edges more than what the model learnt. "
        "On demo-lesions its rank correlation with the trained model's map is 0.71 once the "
        "head is randomised and 0.60 with the last convolution too (docs/quality.md).",
    )

    abs: bool = Field(default=True, description="max over channels of |·| or signed channel sum")

    @override
    def is_signed(self) -> bool:
        return not self.abs
