"""The CAM family's shared pass: one layer's activations and the target's gradient there.

As pytorch-grad-cam expresses its variants: a `GradientCam` runs the pass, checks the layer, and
leaves its subclass only to say how the activations are weighed.
"""

from abc import abstractmethod

import torch

from schemas.methods import LayerParams
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    MethodParameterError,
    P,
    class_activation_map,
    layer_gradient,
)


def spatial_activation(method: str, layer: str, activation: torch.Tensor) -> torch.Tensor:
    """`activation` if it is (N, K, h, w), else MethodParameterError naming the layer's shape."""
    if activation.ndim != 4:
        raise MethodParameterError(
            "layer",
            f"{method} needs a layer with (N, K, h, w) output; {layer!r} gives "
            f"{tuple(activation.shape)}",
        )
    return activation


class GradientCam(AttributionMethod[P]):
    """relu(Σ_k w_k ⊙ A_k) at the layer, upsampled bilinearly to the input; unsigned.

    A = the layer's output (N, K, h, w), g = d(target logit)/dA; `weights` gives w, (N, K) per
    channel or (N, K, h, w) per element.
    """

    def attribute(self, batch: Batch, params: P) -> AttributionMap:
        layer = (params.layer if isinstance(params, LayerParams) else None) or batch.cam_layer
        activation, gradient = layer_gradient(batch.model, batch.inputs, batch.targets, layer)
        activation = spatial_activation(self.id, layer, activation)
        size = (batch.inputs.shape[2], batch.inputs.shape[3])
        cam = class_activation_map(activation, self.weights(activation, gradient), size)
        return AttributionMap(cam, signed=params.is_signed())

    @abstractmethod
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Each channel's (N, K) or each element's (N, K, h, w) weight."""
