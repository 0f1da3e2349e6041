"""LRP rules (how relevance passes one layer), composites (which rule goes where), BN folding.

Relevance travels backwards as the gradient of a modified forward pass. A rule layer outputs its
ordinary value y, but the gradient it passes down is the rule's: for each share z of the output,
built from modified inputs and weights, the incoming gradient g becomes ρ(W)ᵀ (g ⊙ y / z), where
y ⊙ g is the relevance arriving at the layer. It does so in one of two forms:

- per unit, inside the network: the gradient is the relevance divided by the layer's input.
  Between rule layers, plain gradients then pass relevance by the basic rule (LRP-0), which
  conserves it: through ReLU and max pooling (to the winner), concatenations and reshapes, and
  through the linear maps without a rule of their own (average pooling, a BatchNorm that follows
  no layer it could be folded into);
- as relevance, at the input layer: the gradient is the relevance itself, so rules whose
  relevance is not the input times something (z-box, flat) give the input relevance directly.

Rules follow Montavon et al., "Layer-wise relevance propagation: an overview" (2019).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from schemas.methods.lrp import CompositeName, FirstLayerRule

RuleLayer = nn.Conv2d | nn.Linear

Modifier = Callable[[torch.Tensor], torch.Tensor]


def is_rule_layer(module: nn.Module) -> bool:
    """Whether a rule applies to `module`: a Linear, or a Conv2d with zero padding."""
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros"
    return isinstance(module, nn.Linear)


def layer_output(
    layer: RuleLayer, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`layer` applied to `inputs` with `weight` and `bias` in place of its own."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            inputs, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return F.linear(inputs, weight, bias)


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z moved away from zero by epsilon, keeping its sign (zero counts as positive)."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def sum_of(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors (unlike `sum`, without a leading 0)."""
    iterator = iter(tensors)
    total = next(iterator)
    for tensor in iterator:
        total = total + tensor
    return total


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _positive(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clamp(min=0)


def _negative(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clamp(max=0)


@dataclass(frozen=True)
class Term:
    """One part of a share: the layer applied to a modified input with modified parameters.

    `bias` None leaves the bias out. `negative_input` marks a term that reads only the negative
    part of the input, so it vanishes where the input is known to be nonnegative.
    """

    input: Modifier
    weight: Modifier
    bias: Modifier | None
    negative_input: bool = False


@dataclass(frozen=True)
class Share:
    """A sum of terms z that receives `coefficient` × y / z of the relevance."""

    coefficient: float
    terms: tuple[Term, ...]


class Rule(ABC):
    """How relevance passes through one Conv2d or Linear layer."""

    epsilon: float
    # Rules whose relevance is not the input times something work only in the relevance form.
    input_layer_only: ClassVar[bool] = False
    # Whether the first share computes exactly the layer's output (saves a pass).
    output_is_first_share: ClassVar[bool] = False

    @abstractmethod
    def shares(self) -> tuple[Share, ...]:
        """The shares the layer's output relevance is split by."""

    def propagate(
        self,
        layer: RuleLayer,
        inputs: torch.Tensor,
        *,
        relevance_form: bool,
        nonnegative_input: bool = False,
    ) -> torch.Tensor:
        """The layer's output for `inputs`, whose gradient carries this rule's relevance.

        With `relevance_form` the gradient with respect to `inputs` is the input relevance;
        otherwise it is the input relevance divided by `inputs`. `nonnegative_input` says that
        `inputs` holds no negative value, which spares the terms of its negative part.
        """
        if self.input_layer_only and not relevance_form:
            raise ValueError(f"{type(self).__name__} applies to input layers only")
        source = inputs.detach()
        # 1 in value, with the gradient of `inputs`: d/dx of f(a ⊙ unit) is a ⊙ f'(a), relevance.
        unit = inputs - source + 1 if relevance_form else None

        def feed(term: Term) -> torch.Tensor:
            if unit is None:
                return term.input(inputs)
            return term.input(source) * unit

        output = None
        if not self.output_is_first_share:
            with torch.no_grad():
                output = layer_output(layer, source, layer.weight, layer.bias)
        propagated = []
        for share in self.shares():
            z = sum_of(
                layer_output(
                    layer,
                    feed(term),
                    term.weight(layer.weight),
                    None if term.bias is None or layer.bias is None else term.bias(layer.bias),
                )
                for term in share.terms
                if not (nonnegative_input and term.negative_input)
            )
            if output is None:
                output = z.detach()
            weighted = z * (share.coefficient * output / stabilise(z.detach(), self.epsilon))
            propagated.append(weighted - weighted.detach())
        assert output is not None, "a rule has at least one share"
        return output + sum_of(propagated)


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: R_j = Σ_k x_j w_jk R_k / (z_k ± ε), z_k = Σ_j x_j w_jk + b_k."""

    epsilon: float
    output_is_first_share: ClassVar[bool] = True

    def shares(self) -> tuple[Share, ...]:
        return (Share(1.0, (Term(_same, _same, _same),)),)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: α of the relevance by positive contributions, −β by negative ones.

    z⁺_k = Σ_j (x_j w_jk)⁺ + b⁺_k and z⁻_k likewise; α − β = 1 conserves relevance.
    α = 1, β = 0 is the z⁺ rule.
    """

    alpha: float
    beta: float
    epsilon: float

    def shares(self) -> tuple[Share, ...]:
        positive = Share(
            self.alpha,
            (
                Term(_positive, _positive, _positive),
                Term(_negative, _negative, None, negative_input=True),
            ),
        )
        if self.beta == 0:
            return (positive,)
        negative = Share(
            -self.beta,
            (
                Term(_positive, _negative, _negative),
                Term(_negative, _positive, None, negative_input=True),
            ),
        )
        return positive, negative


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """z^B for inputs bounded by [low, high]:
    R_j = Σ_k (x_j w_jk − l_j w⁺_jk − h_j w⁻_jk) R_k / z_k, z_k the sum of those over j.

    `low` and `high` hold as many values per sample as the layer's input (they are reshaped to
    it), or broadcast against it.
    """

    low: torch.Tensor
    high: torch.Tensor
    epsilon: float
    input_layer_only: ClassVar[bool] = True

    def shares(self) -> tuple[Share, ...]:
        return (
            Share(
                1.0,
                (
                    Term(_same, _same, None),
                    Term(lambda x: _fit(self.low, x), lambda w: -_positive(w), None),
                    Term(lambda x: _fit(self.high, x), lambda w: -_negative(w), None),
                ),
            ),
        )


def _fit(bound: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    if bound.shape != inputs.shape and bound.numel() == inputs.numel():
        return bound.reshape(inputs.shape)
    return bound.expand_as(inputs)


@dataclass(frozen=True)
class Flat(Rule):
    """Flat: R_j = Σ_k R_k / n_k, spread evenly over the n_k inputs each output reads."""

    epsilon: float
    input_layer_only: ClassVar[bool] = True

    def shares(self) -> tuple[Share, ...]:
        return (Share(1.0, (Term(torch.ones_like, torch.ones_like, None),)),)


@dataclass(frozen=True, eq=False)
class Composite:
    """Which rule each layer gets.

    - "epsilon": ε everywhere;
    - "epsilon_plus": z⁺ on convolutions, ε on dense layers;
    - "alpha_beta": αβ with β = α − 1 on convolutions, ε on dense layers.

    The input layers get `first_layer` instead: "zbox" (needs `bounds`, the lowest and highest
    normalised input values), "flat", or "same" (the composite's rule).
    """

    name: CompositeName
    first_layer: FirstLayerRule
    epsilon: float
    alpha: float = 2.0
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None

    def rule_for(self, layer: nn.Module, *, input_layer: bool) -> Rule:
        """The rule for `layer`; `input_layer` when it reads the model's input."""
        if input_layer and self.first_layer == "zbox":
            if self.bounds is None:
                raise ValueError("the z-box rule needs the bounds of the input")
            return ZBox(*self.bounds, epsilon=self.epsilon)
        if input_layer and self.first_layer == "flat":
            return Flat(self.epsilon)
        if self.name == "epsilon" or isinstance(layer, nn.Linear):
            return Epsilon(self.epsilon)
        if self.name == "epsilon_plus":
            return AlphaBeta(1.0, 0.0, self.epsilon)
        return AlphaBeta(self.alpha, self.alpha - 1.0, self.epsilon)


def stabilised_sum(a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
    """a + b, passing relevance R to a and b as a / (a + b ± ε) · R and b / (a + b ± ε) · R."""
    total = (a + b).detach()
    weighted = (a + b) * (total / stabilise(total, epsilon))
    return total + (weighted - weighted.detach())


def fold_batch_norm(layer: RuleLayer, norm: nn.modules.batchnorm._BatchNorm) -> RuleLayer:
    """A new layer computing norm(layer(x)) as the eval-mode `norm` does; both stay unchanged."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("only a BatchNorm with running statistics can be folded")
    weight, bias = layer.weight, layer.bias
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if bias is not None:
            shift = shift + bias * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        folded_weight = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    folded: RuleLayer
    if isinstance(layer, nn.Conv2d):
        folded = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            cast(tuple[int, int], layer.kernel_size),
            cast(tuple[int, int], layer.stride),
            cast(tuple[int, int] | str, layer.padding),
            cast(tuple[int, int], layer.dilation),
            layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
    else:
        folded = nn.Linear(
            layer.in_features, layer.out_features, device=weight.device, dtype=weight.dtype
        )
    folded.weight = nn.Parameter(folded_weight, requires_grad=False)
    folded.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=False)
    return folded.train(layer.training)
