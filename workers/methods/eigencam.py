"""Eigen-CAM (Muhammad & Yeasin 2020): a layer's activations on their first principal component."""

import torch

from schemas.methods.eigencam import EigenCamParams
from workers.methods.base import AttributionMap, AttributionMethod, Batch, class_activation_map
from workers.methods.layer_cam import layer_activation
from workers.methods.registry import register


@register
class EigenCam(AttributionMethod[EigenCamParams]):
    """relu(p) at `layer`, upsampled bilinearly to the input; unsigned, one map for all targets.

    As pytorch-grad-cam 1.5.7 computes it: A's channels are centred over the h·w positions and
    p is their projection on the first right singular vector. Its sign, which pytorch-grad-cam's
    EigenCAM leaves to LAPACK, is fixed as its Seg-Eigen-CAM does: p is negated where
    |min p| > |max p|. One forward pass per image and no gradient.
    """

    def attribute(self, batch: Batch, params: EigenCamParams) -> AttributionMap:
        activation = layer_activation(self.id, batch, params.layer or batch.cam_layer)
        centred = activation - activation.mean(dim=(2, 3), keepdim=True)
        component = torch.linalg.svd(centred.flatten(2).mT, full_matrices=False).Vh[:, 0]
        projection = torch.einsum("nk,nkp->np", component, centred.flatten(2))
        flip = projection.amin(1).abs() > projection.amax(1).abs()
        weights = torch.where(flip[:, None], -component, component)
        size = (batch.inputs.shape[2], batch.inputs.shape[3])
        return AttributionMap(class_activation_map(centred, weights, size), params.is_signed())
