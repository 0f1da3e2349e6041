"""Score-CAM (Wang et al. 2020): activation maps weighed by how much they, as masks, raise the
target's probability."""

import torch
import torch.nn.functional as F

from schemas.methods.scorecam import ScoreCamParams
from workers.deadline import check_deadline
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    MapWarning,
    MethodParameterError,
    captured_output,
    class_activation_map,
    find_layer,
    target_columns,
)
from workers.methods.cam_layers import grid_activation
from workers.methods.registry import register


@register
class ScoreCam(AttributionMethod[ScoreCamParams]):
    """relu(Σ_k w_k A_k) at `layer`, upsampled bilinearly to the input; unsigned.

    Each activation map A_k, upsampled to the input and scaled to [0, 1], masks the input
    (input ⊙ mask, in normalised space); w_k is the target's softmax probability on that masked
    input (`Batch.probability`: for a segmentation model, the region's summed pixel probability)
    minus its probability on the all-zero input, the paper's baseline (the limit of an empty
    mask): the "increase of confidence". A constant map carries no location and gets w_k = 0.

    Forward passes only, `batch_size` masked inputs at a time; one per channel with a
    non-constant map, per distinct image (rows that repeat an image share them).
    """

    def attribute(self, batch: Batch, params: ScoreCamParams) -> AttributionMap:
        model, inputs, targets = batch.model, batch.inputs, batch.targets
        layer, batch_size = params.layer or batch.cam_layer, params.batch_size
        size = (inputs.shape[2], inputs.shape[3])
        flat_images, image_of_row = torch.unique(inputs.flatten(1), dim=0, return_inverse=True)
        images = flat_images.view(-1, *inputs.shape[1:])
        classes, column_of_row = torch.unique(targets, return_inverse=True)
        with torch.no_grad():
            activation = _layer_output(batch.with_inputs(images, targets), layer)
            baseline = target_columns(
                batch.probability(model(torch.zeros_like(images[:1]))), classes
            )
            # (images, channels, classes); constant maps keep the baseline, so their weight is 0.
            scores = baseline.expand(*activation.shape[:2], -1).clone()
            varying = activation.amax(dim=(2, 3)) > activation.amin(dim=(2, 3))
            for pairs in varying.nonzero().split(batch_size):
                check_deadline()
                image, channel = pairs[:, 0], pairs[:, 1]
                masks = _unit_range(
                    F.interpolate(
                        activation[image, channel][:, None],
                        size=size,
                        mode="bilinear",
                        align_corners=False,
                    )
                )
                probabilities = batch.probability(model(images[image] * masks))
                scores[image, channel] = target_columns(probabilities, classes)
        weights = scores[image_of_row, :, column_of_row] - baseline[0, column_of_row][:, None]
        cam = class_activation_map(activation[image_of_row], weights, size)
        return AttributionMap(cam, signed=params.is_signed(), warnings=_warnings(weights, cam))


NEGATIVE_WEIGHTS = MapWarning(
    "all_zero",
    "every channel weight was negative or zero for this target (masking the input with any "
    "channel's map lowered its probability below the empty input's), so relu(Σ w_k A_k) is zero "
    "everywhere",
)


def _warnings(weights: torch.Tensor, cam: torch.Tensor) -> tuple[MapWarning | None, ...]:
    """`NEGATIVE_WEIGHTS` for each row whose weights (rows, K) are all ≤ 0 and map is zero."""
    failed = (weights <= 0).all(dim=1) & (cam.flatten(1) == 0).all(dim=1)
    return tuple(NEGATIVE_WEIGHTS if bool(row) else None for row in failed)


def _layer_output(batch: Batch, layer: str) -> torch.Tensor:
    with captured_output(find_layer(batch.model, layer)) as outputs:
        batch.model(batch.inputs)
    if len(outputs) != 1:
        raise MethodParameterError(
            "layer", f"layer {layer!r} runs {len(outputs)} times per forward pass, not once"
        )
    return grid_activation("scorecam", batch, layer, outputs[0].detach())


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (B, 1, H, W) scaled to [0, 1]; a constant map becomes 0."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)
