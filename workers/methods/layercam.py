"""LayerCAM (Jiang et al. 2021): activations weighed element-wise by the positive gradient."""

import torch
from typing_extensions import override

from schemas.methods.layercam import LayerCamParams
from workers.methods.layer_cam import GradientCam
from workers.methods.registry import register


@register
class LayerCam(GradientCam[LayerCamParams]):
    """relu(Σ_k relu(dY/dA_k) ⊙ A_k) at `layer`, upsampled to the input; unsigned.

    Only the locations whose activation would raise the target's score count, each by its own
    gradient, which keeps the detail of shallow layers.
    """

    @override
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return torch.relu(gradient)
