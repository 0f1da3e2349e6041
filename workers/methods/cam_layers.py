"""The layers CAM methods can read as a grid, found by one forward pass, and how to read them.

A `conv` layer outputs (N, K, h, w). A `tokens` layer is a transformer's: (N, e + h·w, D) tokens,
the last h·w of them on the patch grid and the first e extra (a class token, DeiT's distillation
token), or a Swin-style (N, h, w, D) token grid. The grid of a token sequence is the spatial size
of a convolution output computed before it (the patch embedding's), never a square root, so
non-square inputs work; a 4-D output is a token grid when a LayerNorm or Linear layer inside the
module (which act on the last axis) produced that very shape.
"""

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from schemas.models import CamLayerKind
from workers.methods.base import MethodParameterError, input_gradient, layer_gradient

MAX_EXTRA_TOKENS = 16
"""Tokens before the patch grid a sequence may carry (class, distillation, register tokens)."""

_LAST_AXIS_MODULES = (nn.LayerNorm, nn.Linear)


@dataclass(frozen=True)
class CamLayer:
    """A CAM layer on the input size it was found with: its kind, channels K (or D) and grid."""

    name: str
    kind: CamLayerKind
    channels: int
    grid: tuple[int, int]
    extra_tokens: int = 0
    """Tokens before the grid in an (N, e + h·w, D) sequence; 0 for a grid."""

    def as_grid(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as (N, K, h, w); extra tokens dropped.

        Raises MethodParameterError when `output` is not the shape the layer was found with.
        """
        height, width = self.grid
        tokens = self.extra_tokens + height * width
        if self.kind == "conv" and output.shape[1:] == (self.channels, height, width):
            return output
        if self.kind == "tokens" and output.shape[1:] == (height, width, self.channels):
            return output.permute(0, 3, 1, 2)
        if self.kind == "tokens" and output.shape[1:] == (tokens, self.channels):
            grid = output[:, self.extra_tokens :].reshape(-1, height, width, self.channels)
            return grid.permute(0, 3, 1, 2)
        raise MethodParameterError(
            "layer",
            f"layer {self.name!r} gives {tuple(output.shape)}, not the {self.kind} layer of "
            f"{self.channels} channels on a {height}×{width} grid it was found as",
        )


def find_cam_layers(module: nn.Module, example: torch.Tensor) -> dict[str, CamLayer]:
    """The submodules whose output on `example` reads as a grid larger than 1×1, by name.

    Ordered by when their forward call finished, so containers follow their children and the
    deepest layer comes last; a module called more than once counts at its last call. The result
    is kept for `cam_layer` calls on inputs of the example's shape.
    """
    outputs: dict[str, tuple[tuple[int, ...], bool]] = {}
    channels_last: dict[int, torch.Tensor] = {}  # by id; held so that ids stay unique

    def record(name: str, submodule: nn.Module) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, inputs: object, output: object) -> None:
            outputs.pop(name, None)
            if not isinstance(output, torch.Tensor) or output.shape[:1] != example.shape[:1]:
                return
            last = output.ndim == 4 and _is_channels_last(submodule, inputs, output, channels_last)
            if last:
                channels_last[id(output)] = output
            outputs[name] = (tuple(output.shape), last)

        return hook

    handles = [
        submodule.register_forward_hook(record(name, submodule))
        for name, submodule in module.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    layers = _read_layers(outputs, (int(example.shape[2]), int(example.shape[3])))
    _found_on(module)[tuple(example.shape[1:])] = layers
    return layers


def _is_channels_last(
    module: nn.Module, inputs: object, output: torch.Tensor, marked: dict[int, torch.Tensor]
) -> bool:
    """Whether a 4-D output is an (N, h, w, D) token grid: the output of a layer acting on the
    last axis (or a container returning one), of an elementwise step on such a grid, or of a
    permutation of an (N, D, h, w) grid to it."""
    if id(output) in marked or isinstance(module, _LAST_AXIS_MODULES):
        return True
    tensors = (
        [t for t in inputs if isinstance(t, torch.Tensor) and t.ndim == 4]
        if isinstance(inputs, tuple)
        else []
    )
    if any(t.shape == output.shape and id(t) in marked for t in tensors):
        return True
    batch, channels, height, width = output.shape
    return any(
        id(t) not in marked and t.shape == (batch, width, channels, height) and width != height
        for t in tensors
    )


def _read_layers(
    outputs: dict[str, tuple[tuple[int, ...], bool]], size: tuple[int, int]
) -> dict[str, CamLayer]:
    layers: dict[str, CamLayer] = {}
    grids: list[tuple[int, int]] = []
    for name, (shape, channels_last) in outputs.items():
        layer = _as_layer(name, shape, channels_last, grids)
        if layer is None or not _covers(layer.grid, size):
            continue
        if layer.kind == "conv":
            grids.append(layer.grid)
        if layer.grid[0] * layer.grid[1] > 1:
            layers[name] = layer
    return layers


def _covers(grid: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether an h × w grid lies over an H × W input: at most its size, and its aspect ratio
    within a cell (strided layers round). Attention's (N, heads, T, d) tensors are not grids."""
    (height, width), (input_height, input_width) = grid, size
    fits = height <= input_height and width <= input_width
    return fits and abs(height * input_width - width * input_height) <= input_height + input_width


def _as_layer(
    name: str, shape: tuple[int, ...], channels_last: bool, grids: list[tuple[int, int]]
) -> CamLayer | None:
    if len(shape) == 4 and channels_last:
        return CamLayer(name, "tokens", shape[3], (shape[1], shape[2]))
    if len(shape) == 4:
        return CamLayer(name, "conv", shape[1], (shape[2], shape[3]))
    if len(shape) == 3:
        for height, width in reversed(grids):
            extra = shape[1] - height * width
            if 0 <= extra <= MAX_EXTRA_TOKENS and height * width > 1:
                return CamLayer(name, "tokens", shape[2], (height, width), extra)
    return None


_FOUND: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], dict[str, CamLayer]]]" = (
    weakref.WeakKeyDictionary()
)


def _found_on(module: nn.Module) -> dict[tuple[int, ...], dict[str, CamLayer]]:
    return _FOUND.setdefault(module, {})


def cam_layer(model: nn.Module, name: str, inputs: torch.Tensor) -> CamLayer | None:
    """The CAM layer `name` of `model` on inputs shaped like `inputs`, or None if it is none.

    Found once per model and input shape (by `find_cam_layers` on a zero image).
    """
    found = _found_on(model).get(tuple(inputs.shape[1:]))
    if found is None:
        found = find_cam_layers(model, torch.zeros_like(inputs[:1]))
    return found.get(name)


class Traced(Protocol):
    """What a layer's output was computed on: the model and its inputs (a `Batch`, or the
    recorded tensors of a shared pass)."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def inputs(self) -> torch.Tensor: ...


def grid_activation(method: str, batch: Traced, layer: str, output: torch.Tensor) -> torch.Tensor:
    """`output` of the named layer on `batch` read as (N, K, h, w); MethodParameterError naming
    its shape for a layer that is not one."""
    # A 4-D output of a model without LayerNorm is an (N, K, h, w) grid: no discovery pass.
    if output.ndim == 4 and not any(isinstance(m, nn.LayerNorm) for m in batch.model.modules()):
        return output
    found = cam_layer(batch.model, layer, batch.inputs)
    if found is not None:
        return found.as_grid(output)
    if output.ndim == 4:
        return output
    raise MethodParameterError(
        "layer",
        f"{method} needs a layer with a spatial or token output; {layer!r} gives "
        f"{tuple(output.shape)}",
    )


DEFAULT_LAYER_SEED = 0


def default_cam_layer(module: nn.Module, example: torch.Tensor, layers: dict[str, CamLayer]) -> str:
    """The deepest of `layers` whose grid receives a gradient from the logits on `example`
    (its shape, seeded normal values), or the deepest layer if none does.

    A class-token head reads only the class token of the last transformer block, so the grid
    positions of that block's output (and of the final norm) get no gradient and their Grad-CAM
    is zero; the deepest layer whose grid does is the last block's first norm, whose output the
    attention mixes into the class token. On a CNN it is the deepest spatial layer.
    """
    generator = torch.Generator().manual_seed(DEFAULT_LAYER_SEED)
    inputs = torch.randn(example.shape, generator=generator).to(example.device, example.dtype)
    targets = torch.zeros(inputs.shape[0], dtype=torch.int64, device=inputs.device)
    deepest = layers[next(reversed(layers))]
    # Among layers as wide as the deepest: not a query-key-value projection, say.
    names = [name for name, layer in layers.items() if layer.channels == deepest.channels]
    if not bool(input_gradient(module, inputs, targets).abs().sum() > 0):
        return names[-1]  # the logit does not depend on the input: no layer is better
    for name in reversed(names):
        try:
            _, gradient = layer_gradient(module, inputs, targets, name)
        except MethodParameterError:
            continue
        if bool(layers[name].as_grid(gradient).abs().sum() > 0):
            return name
    return names[-1]
