"""Saliency (Simonyan et al. 2014): the gradient of the target logit with respect to the input."""

import torch

from schemas.methods.saliency import SaliencyParams
from workers.methods.base import AttributionMap, AttributionMethod, Batch, input_gradient
from workers.methods.registry import register


@register
class Saliency(AttributionMethod[SaliencyParams]):
    """`abs=True`: max over channels of |gradient|, unsigned; `abs=False`: channel sum, signed."""

    def attribute(self, batch: Batch, params: SaliencyParams) -> AttributionMap:
        gradient = input_gradient(batch.model, batch.inputs, batch.targets)
        reduced = gradient.abs().amax(dim=1) if params.abs else gradient.sum(dim=1)
        return AttributionMap(reduced.to(torch.float32), signed=params.is_signed())
