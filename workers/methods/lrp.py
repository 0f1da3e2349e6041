"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019), the zennit way.

The model is rewritten once (cached per model): its canonical form, with every BatchNorm that
directly follows a Conv2d or Linear folded into it. Each pass then runs that graph with the rules
of a composite (see `lrp_rules`) on its Conv2d and Linear layers, relevance split in proportion
at every residual sum, and starts from the target logit; the gradient with respect to the input
is the input relevance.
"""

import functools
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.global_average_pool import (
    OnnxGlobalAveragePool,
    OnnxGlobalAveragePoolWithKnownInputShape,
)
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from schemas.methods.lrp import LrpParams
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    target_score,
)
from workers.methods.canonical import Concat, Sum, canonical_form, rewritten_form
from workers.methods.lrp_rules import (
    Composite,
    Rule,
    RuleLayer,
    fold_batch_norm,
    is_rule_layer,
    stabilised_sum,
)
from workers.methods.registry import register

_REWRITE_KEY = "lrp: BatchNorm folded"

# Operations whose output is nonnegative wherever their (first) input is.
_SIGN_KEEPING_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    OnnxGlobalAveragePool,
    OnnxGlobalAveragePoolWithKnownInputShape,
)
_SIGN_KEEPING_FUNCTIONS: frozenset[object] = frozenset(
    {torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.dropout}
)
_SIGN_KEEPING_METHODS = frozenset({"flatten", "view", "reshape", "contiguous", "mean"})


@dataclass(frozen=True)
class _LayerPlan:
    """Where the rules go in a relevance graph: its rule layers, by module name."""

    layers: Mapping[str, RuleLayer]
    input_layers: frozenset[str]
    nonnegative_inputs: frozenset[str]


_plans: "weakref.WeakKeyDictionary[fx.GraphModule, _LayerPlan]" = weakref.WeakKeyDictionary()
_DEFAULT_RULES = LrpParams()


def lrp_relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rules: LrpParams = _DEFAULT_RULES,
    input_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The relevance of each input value for each sample's target logit, shaped like `inputs`,
    under `rules` (the composite, the first layer's rule, ε and α).

    `input_bounds` (low, high) are the lowest and highest normalised input values, broadcast
    against `inputs` (e.g. the normalised pixel values 0 and 1, per channel) for the z-box rule;
    by default each sample's own per-channel minimum and maximum. The model is not modified.
    Raises ValueError for a model without Conv2d or Linear layers.
    """
    graph = relevance_graph(model)
    plan = _plan(graph)
    if not plan.layers:
        raise ValueError("LRP needs a model with Conv2d or Linear layers")
    if input_bounds is None:
        input_bounds = _sample_bounds(inputs)
    low, high = (bound.to(inputs).expand_as(inputs) for bound in input_bounds)
    composite = Composite(
        rules.composite, rules.first_layer, rules.epsilon, rules.alpha, bounds=(low, high)
    )
    layer_rules = {
        name: composite.rule_for(layer, input_layer=name in plan.input_layers)
        for name, layer in plan.layers.items()
    }
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _RelevancePass(graph, layer_rules, plan, rules.epsilon).run(leaf)
        # The output relevance is the target logit: y ⊙ one-hot, i.e. the target's gradient.
        (relevance,) = torch.autograd.grad(target_score(logits, targets), leaf)
    return relevance


def relevance_graph(model: nn.Module) -> fx.GraphModule:
    """The canonical form of `model` with BatchNorm folded into the Conv2d or Linear before it.

    Cached per model; the model and its canonical form are left unchanged.
    """

    @functools.cache
    def foldable() -> tuple[dict[str, _BatchNorm], set[str]]:
        pairs = _foldable_pairs(canonical_form(model))
        return {layer: norm for layer, (_, norm) in pairs.items()}, {
            name for name, _ in pairs.values()
        }

    def replace(name: str, module: nn.Module) -> nn.Module | None:
        # Asked only when the rewrite is not cached yet.
        norms_after, folded_norms = foldable()
        if name in norms_after:
            return fold_batch_norm(cast(RuleLayer, module), norms_after[name])
        if name in folded_norms:
            return nn.Identity()
        return None

    return rewritten_form(model, _REWRITE_KEY, replace)


@register
class Lrp(AttributionMethod[LrpParams]):
    """LRP input relevance summed over channels: signed, summing to about the target logit.

    z-box bounds are the normalised values of black and white pixels where the model's
    normalisation is given, else each image's own per-channel value range.
    """

    def refusal(self, model: nn.Module) -> str | None:
        reason = super().refusal(model)
        if reason is None and not any(
            is_rule_layer(module) for module in canonical_form(model).modules()
        ):
            return "lrp needs a convolution or linear layer to apply its rules to"
        return reason

    def attribute(self, batch: Batch, params: LrpParams) -> AttributionMap:
        inputs, normalisation = batch.inputs, batch.normalisation
        relevance = lrp_relevance(
            batch.model,
            inputs,
            batch.targets,
            params,
            input_bounds=None
            if normalisation is None
            else (normalisation.normalised(0.0, inputs), normalisation.normalised(1.0, inputs)),
        )
        return AttributionMap(relevance.sum(dim=1).to(torch.float32), signed=params.is_signed())


class _RelevancePass(fx.Interpreter):
    """Runs a relevance graph with rules on its layers and proportional splits at its sums."""

    def __init__(
        self, graph: fx.GraphModule, rules: Mapping[str, Rule], plan: _LayerPlan, epsilon: float
    ) -> None:
        super().__init__(graph)
        self.rules = rules
        self.plan = plan
        self.epsilon = epsilon

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.fetch_attr(target)
        rule = self.rules.get(target)
        if rule is not None:
            return rule.propagate(
                module,
                args[0],
                relevance_form=target in self.plan.input_layers,
                nonnegative_input=target in self.plan.nonnegative_inputs,
            )
        if isinstance(module, Sum):
            a, b = args
            return stabilised_sum(a, b, self.epsilon)
        return super().call_module(target, args, kwargs)


def _plan(graph: fx.GraphModule) -> _LayerPlan:
    plan = _plans.get(graph)
    if plan is None:
        plan = _plans[graph] = _make_plan(graph)
    return plan


def _make_plan(graph: fx.GraphModule) -> _LayerPlan:
    modules = dict(graph.named_modules())
    layer_nodes = [
        node
        for node in graph.graph.nodes
        if node.op == "call_module" and is_rule_layer(modules[str(node.target)])
    ]
    calls = Counter(str(node.target) for node in layer_nodes)
    # A layer called more than once (shared weights) passes relevance by its plain gradient.
    once = [node for node in layer_nodes if calls[str(node.target)] == 1]
    layer_set = set(once)
    memo: dict[fx.Node, bool] = {}
    return _LayerPlan(
        layers={str(node.target): cast(RuleLayer, modules[str(node.target)]) for node in once},
        input_layers=frozenset(str(node.target) for node in _input_layers(graph, layer_set)),
        nonnegative_inputs=frozenset(
            str(node.target)
            for node in once
            if isinstance(node.args[0], fx.Node) and _nonnegative(node.args[0], modules, memo)
        ),
    )


def _input_layers(graph: fx.GraphModule, layers: set[fx.Node]) -> set[fx.Node]:
    """The layers that the model's input reaches without passing another layer."""
    frontier = [node for node in graph.graph.nodes if node.op == "placeholder"]
    seen = set(frontier)
    found = set()
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in layers:
                found.add(user)
            elif user not in seen:
                seen.add(user)
                frontier.append(user)
    return found


def _nonnegative(
    node: fx.Node, modules: Mapping[str, nn.Module], memo: dict[fx.Node, bool]
) -> bool:
    """Whether `node` is nonnegative by construction (a ReLU, or sign-keeping ops over them)."""
    if node not in memo:
        memo[node] = False  # unless shown below: an unknown operation may output negatives
        sources = [arg for arg in node.args if isinstance(arg, fx.Node)]
        if node.op == "call_module":
            module = modules[str(node.target)]
            if isinstance(module, nn.ReLU):
                memo[node] = True
            elif isinstance(module, (Sum, Concat)):
                memo[node] = bool(sources) and all(
                    _nonnegative(arg, modules, memo) for arg in sources
                )
            elif isinstance(module, _SIGN_KEEPING_MODULES) and sources:
                memo[node] = _nonnegative(sources[0], modules, memo)
        elif (
            node.op == "call_function"
            and node.target in _SIGN_KEEPING_FUNCTIONS
            or node.op == "call_method"
            and node.target in _SIGN_KEEPING_METHODS
        ) and sources:
            memo[node] = _nonnegative(sources[0], modules, memo)
    return memo[node]


def _foldable_pairs(graph: fx.GraphModule) -> dict[str, tuple[str, _BatchNorm]]:
    """Layer name → (name, module) of the BatchNorm that alone reads its output, when foldable."""
    modules = dict(graph.named_modules())
    calls = Counter(str(node.target) for node in graph.graph.nodes if node.op == "call_module")
    pairs = {}
    for node in graph.graph.nodes:
        norm = modules.get(str(node.target)) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if (
            isinstance(norm, _BatchNorm)
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and is_rule_layer(modules[str(source.target)])
            and len(source.users) == 1
            and calls[str(source.target)] == calls[str(node.target)] == 1
            and norm.running_mean is not None
            and not norm.training
        ):
            pairs[str(source.target)] = (str(node.target), norm)
    return pairs


def _sample_bounds(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's per-channel minimum and maximum, shaped (N, C, 1, …)."""
    flat = inputs.detach().flatten(2)
    shape = (*inputs.shape[:2], *[1] * (inputs.ndim - 2))
    return flat.amin(dim=2).reshape(shape), flat.amax(dim=2).reshape(shape)
