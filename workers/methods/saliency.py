"""Saliency (Simonyan et al. 2014): the gradient of the target logit with respect to the input."""

from collections.abc import Mapping

import torch
from torch import nn

from workers.methods.base import AttributionMap, AttributionMethod, Normalisation, input_gradient


class Saliency(AttributionMethod):
    """`abs=True`: max over channels of |gradient|, unsigned; `abs=False`: channel sum, signed."""

    id = "saliency"

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Mapping[str, object],
        normalisation: Normalisation | None = None,
    ) -> AttributionMap:
        gradient = input_gradient(model, inputs, targets)
        if params["abs"]:
            return AttributionMap(gradient.abs().amax(dim=1).to(torch.float32), signed=False)
        return AttributionMap(gradient.sum(dim=1).to(torch.float32), signed=True)
