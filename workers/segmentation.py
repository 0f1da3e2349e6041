"""Segmentation models: logits per pixel, explained as one class's logit summed over a region.

Every attribution method explains one scalar per row, the column `targets[i]` of the model's
(N, columns) output. A segmentation network answers (N, classes, H, W), so a batch of rows, each
with its class c_r and region mask m_r, is explained through `region_model`: the network followed
by `RegionSum`, whose column r is Σ m_r ⊙ logit[c_r], and whose target for row r is r itself. The
mask travels with the target, so a method that repeats its rows (SmoothGrad's noisy copies, the
path points of integrated gradients, Score-CAM's and RISE's masked inputs, occlusion's windows)
keeps every copy's region: it already keeps every copy's target.
"""

import base64
import io
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import fx, nn

from schemas.explain import Prediction, Target, target_classes, target_top_k
from schemas.models import ModelManifest
from schemas.regions import RegionKind, RegionTarget
from workers.methods.base import Forward, TargetError, UnsupportedModelError

REGION_MODULE = "region_scores"
"""The name of the `RegionSum` a region model adds after the network's own modules."""


def output_entry(output: object, key: str) -> torch.Tensor:
    """The logits in a network's answer: the entry `key` of a mapping, or its attribute `key`."""
    entry = output[key] if isinstance(output, Mapping) else getattr(output, key)
    if not isinstance(entry, torch.Tensor | fx.Proxy):  # a Proxy while fx traces the network
        raise UnsupportedModelError(f"the network's output {key!r} is not a tensor")
    return cast(torch.Tensor, entry)


def select_output(network: nn.Module, key: str) -> nn.Module:
    """`network` answering only the tensor under `key`, changed in place and returned.

    Its class becomes a subclass whose `forward` picks the entry, rather than a wrapper around
    it, so that its layers keep their names (the manifest's `cam_layer`, the CAM layers the API
    lists) and fx traces the same graph. Only for a network the loader built itself.
    """
    base = type(network)

    def forward(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return output_entry(base.forward(self, inputs), key)

    network.__class__ = type(
        base.__name__, (base,), {"forward": forward, "__module__": base.__module__}
    )
    return network


def region_sums(logits: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) pixel logits → (M, 2R) for R regions of class `classes[r]` and mask
    `masks[r]`: column r is the class logit summed over the mask, column R + r the class's
    softmax probability summed over it (the expected count of the region's pixels given that
    class, what RISE and Score-CAM weigh by)."""
    masks = masks.to(logits.dtype)
    scores = (logits[:, classes] * masks).sum(dim=(2, 3))
    probabilities = (logits.softmax(dim=1)[:, classes] * masks).sum(dim=(2, 3))
    return torch.cat([scores, probabilities], dim=1)


# One node of a traced graph: the region head is the reading of the network's answer, not one
# of its layers, and the rule-based methods must meet the network's own operations only.
fx.wrap("region_sums")


class RegionSum(nn.Module):
    """`region_sums` of the network's pixel logits for fixed regions (see there)."""

    classes: torch.Tensor
    masks: torch.Tensor

    def __init__(self, classes: torch.Tensor, masks: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("classes", classes)
        self.register_buffer("masks", masks)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        # The loader checked the logits' shape; a check here would stop fx from tracing.
        return region_sums(logits, self.classes, self.masks)


class _RegionScores(nn.Module):
    """An eager network followed by a `RegionSum`, under the network's own module names: its
    children are registered here as they are, and its `forward` runs on the network itself."""

    def __init__(self, network: nn.Module, regions: RegionSum) -> None:
        super().__init__()
        for name, child in network.named_children():
            self.add_module(name, child)
        self.add_module(REGION_MODULE, regions)
        # Not a submodule: its layers are already registered above, under their names.
        object.__setattr__(self, "network", network)
        self.train(network.training)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        network: nn.Module = self.__dict__["network"]
        # The network's forward, not its __call__: fx then meets its layers by the names above.
        return getattr(self, REGION_MODULE)(type(network).forward(network, inputs))


def _graph_with_regions(network: fx.GraphModule, regions: RegionSum) -> fx.GraphModule:
    """A GraphModule network (an ONNX conversion) with a `RegionSum` call before its output: a
    graph still, so that the rule-based methods rewrite its operators as they would the
    network's."""
    graph = fx.Graph()
    output = graph.graph_copy(network.graph, {})
    with graph.inserting_after():
        graph.output(graph.call_module(REGION_MODULE, (output,)))
    attributes: dict[str, Any] = {REGION_MODULE: regions}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and node.target != REGION_MODULE:
            attributes[str(node.target)] = operator.attrgetter(str(node.target))(network)
    graph_module = fx.GraphModule(attributes, graph, class_name="RegionModel")
    graph_module.train(network.training)
    return graph_module


@dataclass(frozen=True)
class Region:
    """One row to explain: a class, the kind of region, and its (H, W) mask at the model's
    input size."""

    class_index: int
    kind: RegionKind
    mask: torch.Tensor


@dataclass(frozen=True)
class RegionBatch:
    """What a method explains for rows with regions: the region model, its forward passes
    (ONNX Runtime's answer reduced the same way), the targets (row r explains column r) and how
    RISE and Score-CAM read a probability from its output."""

    model: nn.Module
    forward: Forward
    targets: torch.Tensor
    regions: RegionSum

    def probability(self, scores: torch.Tensor) -> torch.Tensor:
        """The region probability sums of `scores`, column r for row r."""
        count = self.targets.shape[0]
        return scores[:, count : 2 * count]


def region_batch(network: nn.Module, forward: Forward, regions: Sequence[Region]) -> RegionBatch:
    """The batch of `regions`' rows through `network` (eager or an fx GraphModule); `forward`
    gives the network's pixel logits without gradients."""
    device = regions[0].mask.device
    reduction = RegionSum(
        torch.tensor([region.class_index for region in regions], device=device),
        torch.stack([region.mask for region in regions]),
    )
    model = (
        _graph_with_regions(network, reduction)
        if isinstance(network, fx.GraphModule)
        else _RegionScores(network, reduction)
    )

    def region_forward(inputs: torch.Tensor) -> torch.Tensor:
        return reduction(forward(inputs).to(reduction.masks.dtype))

    targets = torch.arange(len(regions), device=device)
    return RegionBatch(model, region_forward, targets, reduction)


def predictions(logits: torch.Tensor, labels: Sequence[str]) -> list[Prediction]:
    """The classes predicted on some pixel of one image's (C, H, W) logits, largest share first:
    the share of pixels as `score`, the class's mean logit over them as `logit`."""
    predicted = logits.argmax(dim=0)
    counts = torch.bincount(predicted.flatten(), minlength=logits.shape[0])
    sums = (logits * F.one_hot(predicted, logits.shape[0]).permute(2, 0, 1)).sum(dim=(1, 2))
    present = sorted(
        (c for c in range(logits.shape[0]) if counts[c] > 0), key=lambda c: (-int(counts[c]), c)
    )
    total = predicted.numel()
    return [
        Prediction(
            class_index=c,
            label=labels[c],
            score=int(counts[c]) / total,
            logit=float(sums[c] / counts[c]),
        )
        for c in present
    ]


def target_regions(
    target: Target, logits: torch.Tensor, manifest: ModelManifest, image_size: tuple[int, int]
) -> list[Region]:
    """The regions a job's target explains, given the image's (C, H, W) logits and the input
    image's (height, width). Raises TargetError for a class outside the model's, or an empty
    region (a class predicted on no pixel, a box or mask that covers no pixel of the model's
    input)."""
    predicted = logits.argmax(dim=0)
    if isinstance(target, RegionTarget):
        _check_class(target.class_index, manifest)
        if target.kind == "predicted":
            return [_predicted_region(target.class_index, predicted, manifest)]
        mask = _at_model_size(_region_mask(target, image_size), predicted.shape, logits.device)
        if not bool(mask.any()):
            raise TargetError(
                f"the target's {target.kind} covers no pixel of the model's "
                f"{predicted.shape[1]}×{predicted.shape[0]} input"
            )
        return [Region(target.class_index, target.kind, mask)]
    classes = target_classes(target)
    if classes is None:
        classes = _largest_classes(predicted, manifest, target_top_k(target))
    for class_index in classes:
        _check_class(class_index, manifest)
    return [_predicted_region(c, predicted, manifest) for c in classes]


def _check_class(class_index: int, manifest: ModelManifest) -> None:
    if not 0 <= class_index < len(manifest.labels):
        raise TargetError(f"target class outside 0..{len(manifest.labels) - 1}")


def _predicted_region(class_index: int, predicted: torch.Tensor, manifest: ModelManifest) -> Region:
    mask = predicted == class_index
    if not bool(mask.any()):
        raise TargetError(
            f"class {class_index} ({manifest.labels[class_index]!r}) is predicted on no pixel of "
            "this image, so its predicted region is empty: give a box or a mask"
        )
    return Region(class_index, "predicted", mask.float())


def _largest_classes(predicted: torch.Tensor, manifest: ModelManifest, k: int) -> list[int]:
    counts = torch.bincount(predicted.flatten(), minlength=len(manifest.labels)).tolist()
    present = [c for c in range(len(counts)) if counts[c] > 0 and c != manifest.background]
    if not present:
        raise TargetError("no class but the background is predicted on this image")
    return sorted(present, key=lambda c: (-counts[c], c))[:k]


def _region_mask(target: RegionTarget, image_size: tuple[int, int]) -> np.ndarray:
    """The box or mask of `target` as a boolean (height, width) array at the input's size."""
    height, width = image_size
    if target.box is not None:
        x0, y0, x1, y1 = target.box
        if x1 > width or y1 > height:
            raise TargetError(
                f"the box {list(target.box)} reaches outside the {width}×{height} image"
            )
        mask = np.zeros(image_size, dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask
    text = target.mask or ""
    try:
        data = base64.b64decode(text.partition(",")[2] or text, validate=True)
        with Image.open(io.BytesIO(data)) as png:
            mask = np.asarray(png.convert("L")) > 0
    except (ValueError, OSError, Image.DecompressionBombError) as exc:
        raise TargetError(f"the target's mask is not a base64 PNG: {exc}") from None
    if mask.shape != image_size:
        raise TargetError(
            f"the target's mask is {mask.shape[1]}×{mask.shape[0]}, "
            f"not the input's {width}×{height}"
        )
    return mask


def _at_model_size(mask: np.ndarray, size: torch.Size, device: torch.device) -> torch.Tensor:
    """A region mask at the input image's size sampled at the model's: each model pixel takes
    the input pixel under its centre (the image is resized as a whole, without cropping)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size[0], size[1]), mode="nearest-exact")
    return resized[0, 0].to(device)
