"""Grad-CAM++ (Chattopadhyay et al. 2018): channels weighed by pixel-wise weighted gradients."""

import torch
from typing_extensions import override

from schemas.methods.gradcam_pp import GradCamPlusPlusParams
from workers.methods.layer_cam import GradientCam
from workers.methods.registry import register


@register
class GradCamPlusPlus(GradientCam[GradCamPlusPlusParams]):
    """relu(Σ_k w_k A_k) at `layer`, upsampled bilinearly to the input; unsigned.

    The paper's closed form for the class score Y = exp(S) of the target logit S, whose second and
    third derivatives are exp(S)·g² and exp(S)·g³ with g = dS/dA when S is piecewise linear in A
    (ReLU networks): α = g² / (2g² + Σ_ij A_ij·g³) and w_k = Σ_ij α·relu(g), dropping the factor
    exp(S) that scales every channel alike. α is 0 where its denominator is.
    """

    @override
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        squared = gradient.pow(2)
        denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * gradient.pow(3)
        nonzero = denominator != 0
        alpha = torch.where(nonzero, squared / torch.where(nonzero, denominator, 1), 0)
        return (alpha * torch.relu(gradient)).sum(dim=(2, 3))
