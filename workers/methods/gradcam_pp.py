"""Grad-CAM++ (Chattopadhyay et al. 2018): channels weighed by pixel-wise weighted gradients."""

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    MethodParameterError,
    Normalisation,
    class_activation_map,
    layer_gradient,
)


class GradCamPlusPlus(AttributionMethod):
    """relu(Σ_k w_k A_k) at `layer`, upsampled bilinearly to the input; unsigned.

    The paper's closed form for the class score Y = exp(S) of the target logit S, whose second and
    third derivatives are exp(S)·g² and exp(S)·g³ with g = dS/dA when S is piecewise linear in A
    (ReLU networks): α = g² / (2g² + Σ_ij A_ij·g³) and w_k = Σ_ij α·relu(g), dropping the factor
    exp(S) that scales every channel alike. α is 0 where its denominator is.
    """

    id = "gradcam_pp"

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Mapping[str, object],
        normalisation: Normalisation | None = None,
    ) -> AttributionMap:
        layer = cast(str, params["layer"])
        activation, gradient = layer_gradient(model, inputs, targets, layer)
        if activation.ndim != 4:
            raise MethodParameterError(
                "layer",
                f"gradcam_pp needs a layer with (N, K, h, w) output; {layer!r} gives "
                f"{tuple(activation.shape)}",
            )
        squared = gradient.pow(2)
        denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * gradient.pow(3)
        nonzero = denominator != 0
        alpha = torch.where(nonzero, squared / torch.where(nonzero, denominator, 1), 0)
        weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3))
        cam = class_activation_map(activation, weights, (inputs.shape[2], inputs.shape[3]))
        return AttributionMap(cam, signed=False)
