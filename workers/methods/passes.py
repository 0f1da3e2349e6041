"""Shared gradient passes: the forward and backward passes of several gradient methods, run once.

A `PassMethod` says which gradients its map needs (`needs`: the input's or a layer's, under a
backward rule) and how the map follows from them (`from_pass`). `run_passes` plans a request's
methods together: per backward rule ("plain", or "guided" backpropagation) one forward pass over
the images, recording the input and every layer asked for; the caller chooses each image's target
classes from that forward's logits; then, per rule, one backward pass per round of targets (the
first target of every image, then the second, ...) gives every recorded tensor's gradient at once.

So the forward that yields the predictions is the first method's; Grad-CAM's layer gradient is a
by-product of saliency's full backward; guided backprop and Guided Grad-CAM share one guided
backward. Alone, a CAM method's graph starts at its layer, so its backward stops there. A method
gets the same tensors alone as beside others: the backward from the logits to a tensor runs the
same operations whichever other tensors are recorded.
"""

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from schemas.methods import LayerParams
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    MethodParameterError,
    P,
    TargetError,
    find_layer,
)

PLAIN = "plain"

_RULES: dict[str, Callable[[nn.Module], nn.Module]] = {PLAIN: lambda model: model}


def register_rule(rule: str, rewrite: Callable[[nn.Module], nn.Module]) -> None:
    """Declare a backward rule: `rewrite(model)` is the model whose autograd backward is it."""
    _RULES[rule] = rewrite


@dataclass(frozen=True)
class Need:
    """A gradient a method needs: of the input (`layer` None) or of a layer's output, under
    `rule`."""

    rule: str
    layer: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One round's recorded tensors: for each `Need`, the value (the input or the layer's
    output) and d(target logit)/d(value), per image, (N, ...)."""

    tensors: dict[Need, tuple[torch.Tensor, torch.Tensor]]
    model: nn.Module
    inputs: torch.Tensor
    """The images the pass ran on, (N, C, H, W), through `model` (to read a token layer's grid)."""

    @property
    def size(self) -> tuple[int, int]:
        """The inputs' (H, W)."""
        return (self.inputs.shape[2], self.inputs.shape[3])

    def gradient(self, need: Need) -> torch.Tensor:
        return self.tensors[need][1]

    def value(self, need: Need) -> torch.Tensor:
        return self.tensors[need][0]


class PassMethod(AttributionMethod[P]):
    """A gradient method whose map is a function of recorded gradients (see the module)."""

    def attribute(self, batch: Batch, params: P) -> AttributionMap:
        targets = batch.targets.tolist()
        planned = [(self, params)]
        result = run_passes(
            batch.model, batch.inputs, planned, lambda _: [[t] for t in targets], batch.cam_layer
        )
        return result.maps[0]

    def layer_of(self, params: P, cam_layer: str) -> str:
        return (params.layer if isinstance(params, LayerParams) else None) or cam_layer

    @abstractmethod
    def needs(self, params: P, cam_layer: str) -> tuple[Need, ...]:
        """The gradients the map needs."""

    @abstractmethod
    def from_pass(self, recorded: Recorded, params: P, cam_layer: str) -> torch.Tensor:
        """The (N, H, W) maps of one round, from its recorded gradients."""


Planned = Sequence[tuple[PassMethod[Any], Any]]
ChooseTargets = Callable[[torch.Tensor], list[list[int]]]
"""Each image's target classes, from the (N, classes) logits of the first forward pass."""


@dataclass(frozen=True)
class PassResult:
    """The first forward's logits (N, classes), the targets chosen per image, and each planned
    method's maps, one row per (image, target) in that order: (R, H, W)."""

    logits: torch.Tensor
    targets: list[list[int]]
    maps: list[AttributionMap]


def run_passes(
    model: nn.Module, inputs: torch.Tensor, planned: Planned, choose: ChooseTargets, cam_layer: str
) -> PassResult:
    """The planned methods' maps of `inputs` (see the module), one forward per backward rule."""
    rules: dict[str, set[Need]] = {}
    for method, params in planned:
        for need in method.needs(params, cam_layer):
            rules.setdefault(need.rule, set()).add(need)
    ordered = sorted(rules, key=lambda rule: rule != PLAIN)
    # Rule by rule, so that one graph at a time is held: the first forward's logits choose the
    # targets, then each rule's rounds record what the maps need.
    rounds: list[dict[Need, tuple[torch.Tensor, torch.Tensor]]] = []
    chosen: tuple[torch.Tensor, list[list[int]]] | None = None
    for rule in ordered:
        with _forward(model, inputs, rules[rule]) as opened:
            if chosen is None:
                chosen = _chosen(opened.logits.detach(), choose, inputs.shape[0])
                rounds = [{} for _ in range(max(map(len, chosen[1]), default=0))]
            for r, recorded in enumerate(rounds):
                last = r == len(rounds) - 1
                recorded.update(_backward(opened, chosen[1], r, retain=not last))
    assert chosen is not None, "a planned method needs at least one gradient"
    logits, targets = chosen
    per_round = [
        [
            method.from_pass(Recorded(tensors, model, inputs), params, cam_layer)
            for method, params in planned
        ]
        for tensors in rounds
    ]
    maps = []
    for m, (_method, params) in enumerate(planned):
        rows = [per_round[r][m][i] for i, row in enumerate(targets) for r in range(len(row))]
        values = torch.stack(rows) if rows else inputs.new_empty((0, *inputs.shape[2:]))
        maps.append(AttributionMap(values.to(torch.float32), signed=params.is_signed()))
    return PassResult(logits=logits, targets=targets, maps=maps)


def _chosen(
    logits: torch.Tensor, choose: ChooseTargets, images: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """The logits and the targets `choose` picks from them, checked."""
    targets = choose(logits)
    if len(targets) != images:
        raise TargetError(f"targets for {len(targets)} images, not {images}")
    classes = logits.shape[1]
    if any(not 0 <= c < classes for row in targets for c in row):
        raise TargetError(f"target class outside 0..{classes - 1}")
    return logits, targets


@dataclass
class _OpenPass:
    """A forward pass whose graph is kept: its logits and the tensors it recorded."""

    logits: torch.Tensor
    recorded: dict[Need, torch.Tensor]


@contextmanager
def _forward(model: nn.Module, inputs: torch.Tensor, needs: set[Need]) -> Iterator[_OpenPass]:
    """One forward through the rule's model, recording what `needs` asks.

    When only one layer's gradient is needed, the graph starts at that layer (a leaf), so the
    backward stops there; otherwise it starts at the input.
    """
    rule = next(iter(needs)).rule
    rule_model = _RULES[rule](model)
    wants_input = Need(rule) in needs
    layers = sorted(need.layer for need in needs if need.layer is not None)
    from_input = wants_input or len(layers) > 1
    leaf = inputs.detach().requires_grad_(from_input)
    recorded: dict[Need, list[torch.Tensor]] = {Need(rule, name): [] for name in layers}
    state = {"graph_started": from_input}
    with ExitStack() as hooks, torch.enable_grad():
        for name in layers:
            outputs = recorded[Need(rule, name)]
            hooks.enter_context(_recording(find_layer(rule_model, name), outputs, state))
        logits = rule_model(leaf)
    for need, outputs in recorded.items():
        if len(outputs) != 1:
            runs = len(outputs)
            raise MethodParameterError(
                "layer", f"layer {need.layer!r} runs {runs} times per forward pass, not once"
            )
    opened = {need: outputs[0] for need, outputs in recorded.items()}
    if wants_input:
        opened[Need(rule)] = leaf
    yield _OpenPass(logits=logits, recorded=opened)


@contextmanager
def _recording(
    layer: nn.Module, outputs: list[torch.Tensor], state: dict[str, bool]
) -> Iterator[None]:
    """While open, record each output of `layer`; the forward continues on a copy, so in-place
    operations downstream (ReLU(inplace=True)) cannot overwrite the recorded value."""

    def record(_module: nn.Module, _args: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise MethodParameterError("layer", "the layer must output a single tensor")
        if not state["graph_started"]:
            output = output.detach().requires_grad_(True)
            state["graph_started"] = True
        outputs.append(output)
        return output.clone()

    handle = layer.register_forward_hook(record)
    try:
        yield
    finally:
        handle.remove()


def _backward(
    opened: _OpenPass, targets: list[list[int]], round_index: int, *, retain: bool
) -> dict[Need, tuple[torch.Tensor, torch.Tensor]]:
    """d(Σ_i logit_i[target_i])/d(each recorded tensor): per image its own target's gradient,
    as images do not interact in eval mode."""
    logits = opened.logits
    seed = torch.zeros_like(logits)
    for i, classes in enumerate(targets):
        if round_index < len(classes):
            seed[i, classes[round_index]] = 1
    needs = list(opened.recorded)
    gradients = torch.autograd.grad(
        logits, [opened.recorded[need] for need in needs], seed, retain_graph=retain
    )
    return {
        need: (_accumulable(opened.recorded[need].detach()), _accumulable(gradient))
        for need, gradient in zip(needs, gradients, strict=True)
    }


def _accumulable(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 when a mixed-precision pass left it in a half type: maps are formed
    and accumulated in float32 (float64 stays float64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
