"""CAM (Zhou et al. 2016): the linear head's class weights over the features it average-pools.

CAM applies only to models whose output is a linear layer of the global average of a feature
map. The head is found by tracing the model with torch.fx and walking back from the output:
linear ← (flatten, view, reshape, squeeze, dropout, identity)* ← global average pool ← features.
Pools recognised: `nn.AdaptiveAvgPool2d(1)`, `F.adaptive_avg_pool2d(x, 1)`, a mean over the two
spatial dims, and onnx2torch's GlobalAveragePool. That covers the demo model and torchvision's
ResNets, DenseNets, EfficientNets, MobileNetV2, RegNets, ShuffleNets and Inception v3, and their
ONNX conversions. Not supported: heads with more than one layer after the pool (MobileNetV3, VGG),
a normalisation after it (ConvNeXt), and models torch.fx cannot trace.
"""

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.global_average_pool import (
    OnnxGlobalAveragePool,
    OnnxGlobalAveragePoolWithKnownInputShape,
)
from torch import fx, nn

from schemas.methods.cam import CamParams
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    UnsupportedModelError,
    class_activation_map,
    target_columns,
)
from workers.methods.facts import need_check
from workers.methods.registry import register

# Identities in eval mode, or reshapes of the pooled (N, K, 1, 1) tensor to (N, K).
_PASS_THROUGH_MODULES = (nn.Flatten, nn.Identity, nn.Dropout)
_PASS_THROUGH_FUNCTIONS = (torch.flatten, torch.squeeze, torch.reshape)
_PASS_THROUGH_METHODS = ("flatten", "view", "reshape", "squeeze")
_POOL_MODULES = (OnnxGlobalAveragePool, OnnxGlobalAveragePoolWithKnownInputShape)
_SPATIAL_DIMS = ({2, 3}, {-2, -1})


@dataclass(frozen=True)
class GapLinearHead:
    """A model split at its global average pool.

    `trunk` maps the model's input to the features the pool averages; it shares its modules and
    parameters with the model. `classifier` is the linear layer that follows the pool.
    """

    trunk: fx.GraphModule
    classifier: nn.Linear


@register
class Cam(AttributionMethod[CamParams]):
    """relu(Σ_k w_{c,k} A_k): the feature maps A entering the global average pool, weighed by the
    target's row w_c of the linear head (bias left out), upsampled bilinearly to the input; the
    ReLU keeps evidence for the class. Unsigned.

    On such a model this is Grad-CAM at the pooled features times h·w (Selvaraju et al. 2017).
    Raises `UnsupportedModelError` for a model without a global-average-pool + linear head.
    """

    def attribute(self, batch: Batch, params: CamParams) -> AttributionMap:
        inputs, targets = batch.inputs, batch.targets
        head = gap_linear_head(batch.model, inputs.device)
        with torch.no_grad():
            features = head.trunk(inputs)
        class_weights = head.classifier.weight
        if features.ndim != 4 or features.shape[1] != class_weights.shape[1]:
            raise UnsupportedModelError(
                f"cam: the pooled features have shape {tuple(features.shape)}, not "
                f"(N, {class_weights.shape[1]}, h, w) as the linear head needs"
            )
        weights = target_columns(class_weights.T, targets).T
        cam = class_activation_map(features, weights, (inputs.shape[2], inputs.shape[3]))
        return AttributionMap(cam, signed=params.is_signed())


@need_check("linear_head")
def _linear_head_check(model: nn.Module) -> str | None:
    parameter = next(model.parameters(), None)
    device = torch.device("cpu") if parameter is None else parameter.device
    heads = _HEADS.setdefault(model, {})
    if device not in heads:
        heads[device] = _find_head(model)
    head = heads[device]
    return head if isinstance(head, str) else None


# Per model, per device: a trunk's own tensors (fx constants, buffers fetched by get_attr) stay on
# the device it was built for, while its modules follow the model.
_HEADS: WeakKeyDictionary[nn.Module, dict[torch.device, GapLinearHead | str]] = WeakKeyDictionary()


def gap_linear_head(model: nn.Module, device: torch.device) -> GapLinearHead:
    """The model's global-average-pool + linear head, for inputs on `device`.

    Traced once per model and device. Raises `UnsupportedModelError` saying why when the model
    has no such head or cannot be traced.
    """
    heads = _HEADS.setdefault(model, {})
    if device not in heads:
        heads[device] = _find_head(model)
    head = heads[device]
    if isinstance(head, str):
        raise UnsupportedModelError(f"cam needs a global-average-pool + linear head: {head}")
    return head


def _find_head(model: nn.Module) -> GapLinearHead | str:
    """The head, or why there is none."""
    if isinstance(model, fx.GraphModule):
        root = model
    else:
        try:
            root = fx.symbolic_trace(model)
        # Tracing runs arbitrary model code; whatever stops it makes the model unsupported.
        except Exception as exc:
            return f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    (output,) = (node for node in root.graph.nodes if node.op == "output")
    linear = output.args[0]
    classifier = _module(root, linear) if isinstance(linear, fx.Node) else None
    if not isinstance(linear, fx.Node) or not isinstance(classifier, nn.Linear):
        return "the model's output is not computed by an nn.Linear layer"
    node = _first_input(linear)
    while node is not None and len(node.users) == 1 and _passes_through(root, node):
        node = _first_input(node)
    if node is None or len(node.users) != 1 or not _is_global_average_pool(root, node):
        return "the input of the final linear layer is not a global average pool"
    features = _first_input(node)
    if features is None:
        return "the global average pool has no tensor input"
    trunk = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    for original in root.graph.nodes:
        copies[original] = trunk.node_copy(original, copies.__getitem__)
        if original is features:
            break
    trunk.output(copies[features])
    return GapLinearHead(trunk=fx.GraphModule(root, trunk), classifier=classifier)


def _module(root: nn.Module, node: fx.Node) -> nn.Module | None:
    return root.get_submodule(str(node.target)) if node.op == "call_module" else None


def _first_input(node: fx.Node) -> fx.Node | None:
    first = node.args[0] if node.args else None
    return first if isinstance(first, fx.Node) else None


def _passes_through(root: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(root, node), _PASS_THROUGH_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_THROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_THROUGH_METHODS


def _is_global_average_pool(root: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = _module(root, node)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return module.output_size in (1, (1, 1))
        return isinstance(module, _POOL_MODULES)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op == "call_function" and node.target is torch.mean) or (
        node.op == "call_method" and node.target == "mean"
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, tuple | list) and set(dims) in _SPATIAL_DIMS
    return False
