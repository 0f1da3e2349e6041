"""Saliency (Simonyan et al. 2014): the gradient of the target logit with respect to the input."""

import torch

from schemas.methods.saliency import SaliencyParams
from workers.methods.passes import PLAIN, Need, PassMethod, Recorded
from workers.methods.registry import register


def reduce_channels(gradient: torch.Tensor, *, absolute: bool) -> torch.Tensor:
    """Max over channels of |gradient| (`absolute`), else the channel sum: (N, H, W)."""
    return gradient.abs().amax(dim=1) if absolute else gradient.sum(dim=1)


@register
class Saliency(PassMethod[SaliencyParams]):
    """`abs=True`: max over channels of |gradient|, unsigned; `abs=False`: channel sum, signed."""

    def needs(self, params: SaliencyParams, cam_layer: str) -> tuple[Need, ...]:  # noqa: ARG002
        return (Need(PLAIN),)

    def from_pass(
        self,
        recorded: Recorded,
        params: SaliencyParams,
        cam_layer: str,  # noqa: ARG002 - no layer
    ) -> torch.Tensor:
        return reduce_channels(recorded.gradient(Need(PLAIN)), absolute=params.abs)
