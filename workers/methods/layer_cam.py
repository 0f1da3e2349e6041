"""The CAM family's shared pass: one layer's activations and the target's gradient there.

As pytorch-grad-cam expresses its variants: a `GradientCam` runs the pass, checks the layer, and
leaves its subclass only to say how the activations are weighed. `layer_activation` is the pass
of the variants that need no gradient.
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
    captured_output,
    class_activation_map,
    find_layer,
    layer_gradient,
    target_columns,
)
from workers.methods.cam_layers import grid_activation


def spatial_activation(
    method: str, batch: Batch, layer: str, activation: torch.Tensor
) -> torch.Tensor:
    """The named layer's `activation` (or its gradient) on `batch` as (N, K, h, w): a token layer
    read on its patch grid; MethodParameterError naming the layer's shape for a layer that is no
    CAM layer."""
    return grid_activation(method, batch, layer, activation)


def layer_activation(method: str, batch: Batch, layer: str) -> torch.Tensor:
    """The named layer's output for each row of `batch` as (N, K, h, w), without gradients.

    One forward pass over the batch's distinct images: rows that repeat an image share it. The
    targets are checked against the model's logits all the same.
    """
    inputs = batch.inputs
    images, image_of_row = torch.unique(inputs.flatten(1), dim=0, return_inverse=True)
    with captured_output(find_layer(batch.model, layer)) as outputs, torch.no_grad():
        target_columns(batch.model(images.view(-1, *inputs.shape[1:])), batch.targets)
    if len(outputs) != 1:
        raise MethodParameterError(
            "layer", f"layer {layer!r} runs {len(outputs)} times per forward pass, not once"
        )
    return spatial_activation(method, batch, layer, outputs[0].detach())[image_of_row]


class GradientCam(AttributionMethod[P]):
    """relu(Σ_k w_k ⊙ A_k) at the layer, upsampled bilinearly to the input; unsigned.

    A = the layer's output read as (N, K, h, w) (a token layer on its patch grid), g = d(target
    logit)/dA read the same way; `weights` gives w, (N, K) per
    channel or (N, K, h, w) per element.
    """

    def attribute(self, batch: Batch, params: P) -> AttributionMap:
        layer = (params.layer if isinstance(params, LayerParams) else None) or batch.cam_layer
        activation, gradient = layer_gradient(batch.model, batch.inputs, batch.targets, layer)
        activation = spatial_activation(self.id, batch, layer, activation)
        gradient = spatial_activation(self.id, batch, layer, gradient)
        size = (batch.inputs.shape[2], batch.inputs.shape[3])
        cam = class_activation_map(activation, self.weights(activation, gradient), size)
        return AttributionMap(cam, signed=params.is_signed())

    @abstractmethod
    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Each channel's (N, K) or each element's (N, K, h, w) weight."""
