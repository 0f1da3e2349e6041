"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation masked by Grad-CAM."""

import torch

from schemas.methods.gradcam import GradCamParams
from schemas.methods.guided_gradcam import GuidedGradCamParams
from workers.methods.base import AttributionMap, AttributionMethod, Batch
from workers.methods.gradcam import GradCam
from workers.methods.guided_backprop import guided_gradient
from workers.methods.registry import register

_GRADCAM = GradCam()


@register
class GuidedGradCam(AttributionMethod[GuidedGradCamParams]):
    """Grad-CAM at `layer`, upsampled bilinearly to the input, times the guided gradient; unsigned.

    The paper multiplies per input channel (Captum's `GuidedGradCam` returns that product); the
    map takes the largest magnitude over channels, as guided backprop's default does, which is
    the same as the channel max of |Captum's product| because the Grad-CAM factor is >= 0.
    """

    def attribute(self, batch: Batch, params: GuidedGradCamParams) -> AttributionMap:
        cam = _GRADCAM.attribute(batch, GradCamParams(layer=params.layer)).values
        guided = guided_gradient(batch.model, batch.inputs, batch.targets)
        values = guided.abs().amax(dim=1).to(torch.float32) * cam
        return AttributionMap(values, signed=params.is_signed())
