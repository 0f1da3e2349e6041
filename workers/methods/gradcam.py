"""Grad-CAM (Selvaraju et al. 2017): a layer's channels weighed by their mean gradient."""

import torch
from typing_extensions import override

from schemas.methods.gradcam import GradCamParams
from workers.methods.layer_cam import GradientCam
from workers.methods.registry import register


@register
class GradCam(GradientCam[GradCamParams]):
    """relu(Σ_k mean(dY/dA_k) · A_k) at `layer`, upsampled to the input; unsigned."""

    @override
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.mean(dim=(2, 3))
