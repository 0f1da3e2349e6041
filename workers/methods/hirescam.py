"""HiResCAM (Draelos & Collins 2020): a layer's activations weighed element-wise by the gradient."""

import torch
from typing_extensions import override

from schemas.methods.hirescam import HiResCamParams
from workers.methods.layer_cam import GradientCam
from workers.methods.registry import register


@register
class HiResCam(GradientCam[HiResCamParams]):
    """relu(Σ_k dY/dA_k ⊙ A_k) at `layer`, upsampled to the input; unsigned.

    Grad-CAM without the spatial mean of the gradient: each activation keeps its own weight.
    """

    @override
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient
