"""Grad-CAM (Selvaraju et al. 2017): a layer's channels weighed by their mean gradient."""

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


class GradCam(AttributionMethod):
    """relu(sum_k mean(dY/dA_k) * A_k) at `layer`, upsampled to the input; unsigned."""

    id = "gradcam"

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
                f"gradcam needs a layer with (N, K, h, w) output; {layer!r} gives "
                f"{tuple(activation.shape)}",
            )
        weights = gradient.mean(dim=(2, 3))
        cam = class_activation_map(activation, weights, (inputs.shape[2], inputs.shape[3]))
        return AttributionMap(cam, signed=False)
