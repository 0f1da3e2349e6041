"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation masked by Grad-CAM."""

import torch

from schemas.methods.guided_gradcam import GuidedGradCamParams
from workers.methods.gradcam import GradCam
from workers.methods.guided_backprop import GUIDED
from workers.methods.passes import PLAIN, Need, PassMethod, Recorded
from workers.methods.registry import register

_GRADCAM = GradCam()


@register
class GuidedGradCam(PassMethod[GuidedGradCamParams]):
    """Grad-CAM at `layer`, upsampled bilinearly to the input, times the guided gradient; unsigned.

    The paper multiplies per input channel (Captum's `GuidedGradCam` returns that product); the
    map takes the largest magnitude over channels, as guided backprop's default does, which is
    the same as the channel max of |Captum's product| because the Grad-CAM factor is >= 0.
    Its passes are Grad-CAM's and guided backprop's, shared with them in one request.
    """

    def needs(self, params: GuidedGradCamParams, cam_layer: str) -> tuple[Need, ...]:
        return (Need(PLAIN, self.layer_of(params, cam_layer)), Need(GUIDED))

    def from_pass(
        self, recorded: Recorded, params: GuidedGradCamParams, cam_layer: str
    ) -> torch.Tensor:
        cam = _GRADCAM.cam(recorded, self.layer_of(params, cam_layer), recorded.size)
        guided = recorded.gradient(Need(GUIDED))
        return guided.abs().amax(dim=1).to(torch.float32) * cam
