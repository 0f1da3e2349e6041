"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation masked by Grad-CAM."""

from collections.abc import Mapping

import torch
from torch import nn

from workers.methods.base import AttributionMap, AttributionMethod, Normalisation
from workers.methods.canonical import has_canonical_form
from workers.methods.gradcam import GradCam
from workers.methods.guided_backprop import guided_gradient

_GRADCAM = GradCam()


class GuidedGradCam(AttributionMethod):
    """Grad-CAM at `layer`, upsampled bilinearly to the input, times the guided gradient; unsigned.

    The paper multiplies per input channel (Captum's `GuidedGradCam` returns that product); the
    map takes the largest magnitude over channels, as guided backprop's default does, which is
    the same as the channel max of |Captum's product| because the Grad-CAM factor is >= 0.
    """

    id = "guided_gradcam"

    def supports(self, model: nn.Module) -> bool:
        return has_canonical_form(model)

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Mapping[str, object],
        normalisation: Normalisation | None = None,
    ) -> AttributionMap:
        cam = _GRADCAM.attribute(model, inputs, targets, params).values
        guided = guided_gradient(model, inputs, targets)
        return AttributionMap(guided.abs().amax(dim=1).to(torch.float32) * cam, signed=False)
