"""XGrad-CAM (Fu et al. 2020): channels weighed by their activation-weighted gradient."""

import torch
from typing_extensions import override

from schemas.methods.xgradcam import XGradCamParams
from workers.methods.layer_cam import GradientCam
from workers.methods.registry import register


@register
class XGradCam(GradientCam[XGradCamParams]):
    """relu(Σ_k w_k A_k) at `layer`, upsampled to the input; unsigned.

    w_k = Σ_ij (A_k,ij / Σ_ij A_k,ij) · dY/dA_k,ij, as the paper derives it from its sensitivity
    and conservation axioms; 0 for a channel whose activations sum to 0 (a dead ReLU channel).
    pytorch-grad-cam adds 1e-7 to the sum instead, which shifts channels of small sums.
    """

    @override
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        total = activation.sum(dim=(2, 3))
        nonzero = total != 0
        weighted = (gradient * activation).sum(dim=(2, 3))
        return torch.where(nonzero, weighted / torch.where(nonzero, total, 1), 0)
