"""LRP rules on single layers against a matrix-form re-implementation, and BatchNorm folding.

The reference writes each layer as a dense matrix M (n_out × n_in, found by feeding it the basis
vectors) and applies the rules of Montavon et al. (2019) to the contributions z_kj = M_kj x_j in
numpy, in float64. Both sides are compared within the float64 rounding of the sums each does,
counted per unit from the magnitudes summed (`propagated`); a wrong rule is off by whole terms.
"""

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.methods.lrp_rules import (
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Rule,
    ZBox,
    fold_batch_norm,
    stabilised_sum,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EPS64 = float(np.finfo(np.float64).eps)
INPUT_SHAPES = {"linear": (1, 12), "conv": (1, 4, 7, 7)}


def make_layer(kind: str) -> nn.Conv2d | nn.Linear:
    torch.manual_seed(0)
    layer: nn.Conv2d | nn.Linear
    if kind == "linear":
        layer = nn.Linear(12, 5)
    else:
        layer = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        uniform(layer.bias, -0.3, 0.3)
    return layer.double().eval().requires_grad_(False)


def uniform(tensor: torch.Tensor | None, low: float, high: float) -> None:
    assert tensor is not None
    with torch.no_grad():
        tensor.uniform_(low, high)


def randomise(norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Statistics and a scale far from the identity, so that folding has work to do."""
    uniform(norm.running_mean, -1, 1)
    uniform(norm.running_var, 0.2, 3)
    uniform(norm.weight, -2, 2)


def dense_matrix(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor) -> np.ndarray:
    """M with layer(x) = M x + bias, for `layer` run with `weight`."""
    shape = INPUT_SHAPES["linear" if isinstance(layer, nn.Linear) else "conv"]
    count = int(np.prod(shape))
    basis = torch.eye(count, dtype=torch.float64).reshape(count, *shape[1:])
    if isinstance(layer, nn.Linear):
        columns = F.linear(basis, weight)
    else:
        columns = F.conv2d(basis, weight, None, layer.stride, layer.padding, 1, layer.groups)
    return columns.reshape(count, -1).T.numpy()


def dense_bias(layer: nn.Conv2d | nn.Linear) -> np.ndarray:
    with torch.no_grad():
        zero = torch.zeros(INPUT_SHAPES["linear" if isinstance(layer, nn.Linear) else "conv"])
        return layer(zero.double()).flatten().numpy()


def stab(z: np.ndarray, epsilon: float) -> np.ndarray:
    return np.where(z >= 0, z + epsilon, z - epsilon)


Part = tuple[float, np.ndarray, np.ndarray | float]
"""(coefficient c, contributions a_kj, the bias b_k in z_k): a rule's R_j = Σ c Σ_k a_kj R_k / z_k
with z_k = Σ_j a_kj + b_k stabilised by ε."""


def propagated(
    parts: list[Part], r: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, a bound on the float64 rounding of R per input, the relevance ε absorbs per part).

    Each z_k sums ≤ n_in + 1 products and a bias, ≲ (n_in + 2) eps64 of S_k = Σ_j |a_kj| + |b_k|,
    and ε and the division add two roundings: R_k / z_k is off by eps64 · ((n_in + 3) S_k / |z_k|
    + 1) relative. Each R_j sums ≤ n_out products of it and, per unit form, one product with x_j:
    (n_out + 2) eps64 more. Both sides round this way, hence the factor 2. Every z_k is asserted
    to be farther from 0 than its rounding, so that both sides stabilise it the same way.
    """
    relevance = np.zeros(parts[0][1].shape[1])
    bound = np.zeros_like(relevance)
    absorbed = np.zeros(len(parts))
    for index, (coefficient, a, b) in enumerate(parts):
        n_in, n_out = int((a != 0).sum(1).max()), int((a != 0).sum(0).max())
        z = a.sum(1) + b
        summed = np.abs(a).sum(1) + np.abs(b)
        rounding = (n_in + 2) * EPS64 * summed
        assert bool(np.all((summed == 0) | (np.abs(z) > 2 * rounding))), (
            "a z_k rounds to either side"
        )
        stabilised = stab(z, eps)
        shares = np.abs(r / stabilised)
        relevance = relevance + coefficient * a.T @ (r / stabilised)
        conditioning = (n_in + 3) * summed / np.abs(stabilised) + n_out + 3
        bound = bound + 2 * EPS64 * abs(coefficient) * np.abs(a).T @ (shares * conditioning)
        absorbed[index] = abs(coefficient) * float((shares * eps).sum())
    return relevance, bound, absorbed


def ref_epsilon(m: np.ndarray, b: np.ndarray, x: np.ndarray) -> list[Part]:
    return [(1.0, m * x[None, :], b)]


def ref_alpha_beta(alpha: float, beta: float) -> Callable[..., list[Part]]:
    def rule(m: np.ndarray, b: np.ndarray, x: np.ndarray) -> list[Part]:
        contributions = m * x[None, :]
        positive, negative = np.maximum(contributions, 0), np.minimum(contributions, 0)
        return [(alpha, positive, np.maximum(b, 0)), (-beta, negative, np.minimum(b, 0))]

    return rule


def pixel_bounds(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised images of pixel values 0 and 1, per channel, broadcast to `shape`."""
    mean = torch.tensor(MEAN + [0.5], dtype=torch.float64)[: shape[1], None, None]
    std = torch.tensor(STD + [0.25], dtype=torch.float64)[: shape[1], None, None]
    return ((0 - mean) / std).expand(shape[1:])[None], ((1 - mean) / std).expand(shape[1:])[None]


def relevance_through(  # noqa: PLR0913 - Rule.propagate's arguments and the output's gradient
    rule: Rule,
    layer: nn.Conv2d | nn.Linear,
    x: torch.Tensor,
    gradient: torch.Tensor,
    *,
    relevance_form: bool,
    nonnegative_input: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's output, the input relevance) when y ⊙ `gradient` arrives at the output."""
    leaf = x.clone().requires_grad_(True)
    output = rule.propagate(
        layer, leaf, relevance_form=relevance_form, nonnegative_input=nonnegative_input
    )
    (grad,) = torch.autograd.grad(output, leaf, gradient)
    return output.detach(), grad if relevance_form else grad * x


def check_rule(rule: Rule, reference: Callable[..., list[Part]], kind: str, x: torch.Tensor, **kw):
    layer = make_layer(kind)
    with torch.no_grad():
        y = layer(x)
    gradient = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    output, relevance = relevance_through(rule, layer, x, gradient, **kw)

    m, b, flat_x = dense_matrix(layer, layer.weight), dense_bias(layer), x.flatten().numpy()
    parts = reference(m, b, flat_x)
    expected, bound, _ = propagated(parts, (y * gradient).flatten().numpy(), rule.epsilon)
    # The rule's forward pass is the layer's: the same sums of ≤ n_in + 1 terms, each side
    # rounding them by ≲ (n_in + 2) eps64 of the magnitudes summed.
    n_in = int((m != 0).sum(1).max())
    magnitude = torch.from_numpy(np.abs(m) @ np.abs(flat_x) + np.abs(b)).reshape(y.shape)
    assert bool(((output - y).abs() <= 2 * (n_in + 2) * EPS64 * magnitude).all())
    deviation = np.abs(relevance.flatten().numpy() - expected)
    assert bool(np.all(deviation <= bound)), float((deviation / bound).max())
    assert np.abs(expected).max() > 1e-3, "an empty reference would prove nothing"
    assert float((bound / np.abs(expected).max()).max()) < 1e-9, "the bound would hide a wrong rule"


def signed_input(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(INPUT_SHAPES[kind], dtype=torch.float64, generator=generator)


KINDS = ["linear", "conv"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("relevance_form", [True, False])
@pytest.mark.parametrize("epsilon", [1e-9, 0.1])
def test_epsilon(kind: str, relevance_form: bool, epsilon: float) -> None:
    check_rule(
        Epsilon(epsilon), ref_epsilon, kind, signed_input(kind), relevance_form=relevance_form
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("relevance_form", [True, False])
@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 1.0), (1.0, 0.0)])
def test_alpha_beta_and_z_plus(kind: str, relevance_form: bool, alpha: float, beta: float) -> None:
    check_rule(
        AlphaBeta(alpha, beta, 1e-6),
        ref_alpha_beta(alpha, beta),
        kind,
        signed_input(kind),
        relevance_form=relevance_form,
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 1.0), (1.0, 0.0)])
def test_alpha_beta_on_a_nonnegative_input_skips_nothing_it_needs(
    kind: str, alpha: float, beta: float
) -> None:
    check_rule(
        AlphaBeta(alpha, beta, 1e-6),
        ref_alpha_beta(alpha, beta),
        kind,
        signed_input(kind).clamp(min=0),
        relevance_form=False,
        nonnegative_input=True,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_z_box_with_the_bounds_of_normalised_pixels(kind: str) -> None:
    shape = INPUT_SHAPES[kind]
    channels = 4 if kind == "conv" else 1
    low, high = pixel_bounds((1, channels, *shape[2:]) if kind == "conv" else (1, 1, 1, 12))
    low, high = low.reshape(shape), high.reshape(shape)
    pixels = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = low + pixels * (high - low)

    def reference(m: np.ndarray, _b: np.ndarray, x: np.ndarray) -> list[Part]:
        lo, hi = low.flatten().numpy(), high.flatten().numpy()
        contributions = (
            m * x[None, :] - np.maximum(m, 0) * lo[None, :] - np.minimum(m, 0) * hi[None, :]
        )
        return [(1.0, contributions, 0.0)]

    check_rule(ZBox(low, high, 1e-9), reference, kind, x, relevance_form=True)


def test_z_box_bounds_broadcast_per_channel() -> None:
    low = torch.tensor([-2.0, -1.0, -3.0, -1.5], dtype=torch.float64)[None, :, None, None]
    high = low + 4
    x = low + 4 * torch.rand(INPUT_SHAPES["conv"], dtype=torch.float64)
    layer = make_layer("conv")
    gradient = torch.randn_like(layer(x))

    _, per_channel = relevance_through(
        ZBox(low, high, 1e-9), layer, x, gradient, relevance_form=True
    )
    _, full = relevance_through(
        ZBox(low.expand_as(x), high.expand_as(x), 1e-9), layer, x, gradient, relevance_form=True
    )

    # Both bounds reach the convolutions as the same stride-0 view of the input's shape: the
    # same numbers through the same arithmetic, equal to the bit on any processor.
    torch.testing.assert_close(per_channel, full, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_flat(kind: str) -> None:
    layer = make_layer(kind)

    def reference(_m: np.ndarray, _b: np.ndarray, _x: np.ndarray) -> list[Part]:
        return [(1.0, dense_matrix(layer, torch.ones_like(layer.weight)), 0.0)]

    check_rule(Flat(1e-9), reference, kind, signed_input(kind), relevance_form=True)


@pytest.mark.parametrize("rule", [ZBox(torch.zeros(1), torch.ones(1), 0.0), Flat(0.0)])
def test_input_layer_rules_refuse_the_per_unit_form(rule: Rule) -> None:
    with pytest.raises(ValueError, match="input layers"):
        rule.propagate(make_layer("linear"), signed_input("linear"), relevance_form=False)


def test_rules_with_zero_bias_conserve_relevance() -> None:
    layer = make_layer("conv")
    assert layer.bias is not None
    layer.bias.zero_()
    x = signed_input("conv")
    gradient = torch.randn_like(layer(x))
    arriving = layer(x) * gradient
    m, b, flat_x = dense_matrix(layer, layer.weight), dense_bias(layer), x.flatten().numpy()

    for rule, parts in (
        (Epsilon(1e-12), ref_epsilon(m, b, flat_x)),
        (AlphaBeta(2.0, 1.0, 1e-12), ref_alpha_beta(2.0, 1.0)(m, b, flat_x)),
        (AlphaBeta(1.0, 0.0, 1e-12), ref_alpha_beta(1.0, 0.0)(m, b, flat_x)),
    ):
        _, relevance = relevance_through(rule, layer, x, gradient, relevance_form=False)
        # Σ_j R_j = Σ c Σ_k R_k z_k / (z_k ± ε): off by what ε absorbs, the rounding of each R_j
        # (`propagated`) and of the two totals, ≲ count · eps64 of the magnitudes summed.
        _, bound, absorbed = propagated(parts, arriving.flatten().numpy(), rule.epsilon)
        totals = EPS64 * sum(v.numel() * float(v.abs().sum()) for v in (relevance, arriving))
        error = abs(float(relevance.sum()) - float(arriving.sum()))
        assert error <= float(absorbed.sum() + bound.sum()) + totals, error
        assert float(relevance.abs().sum()) > 1e-3


def test_composites_assign_rules_by_layer_and_position() -> None:
    conv, dense = nn.Conv2d(1, 1, 1), nn.Linear(1, 1)
    bounds = (torch.zeros(1), torch.ones(1))

    plus = Composite("epsilon_plus", "zbox", 0.01, bounds=bounds)
    assert plus.rule_for(conv, input_layer=False) == AlphaBeta(1.0, 0.0, 0.01)
    assert plus.rule_for(dense, input_layer=False) == Epsilon(0.01)
    assert isinstance(plus.rule_for(conv, input_layer=True), ZBox)

    alpha_beta = Composite("alpha_beta", "same", 0.01, alpha=3.0)
    assert alpha_beta.rule_for(conv, input_layer=True) == AlphaBeta(3.0, 2.0, 0.01)
    assert alpha_beta.rule_for(dense, input_layer=True) == Epsilon(0.01)

    epsilon = Composite("epsilon", "flat", 0.5)
    assert epsilon.rule_for(conv, input_layer=False) == Epsilon(0.5)
    assert epsilon.rule_for(conv, input_layer=True) == Flat(0.5)
    with pytest.raises(ValueError, match="bounds"):
        Composite("epsilon", "zbox", 0.5).rule_for(conv, input_layer=True)


def test_a_sum_splits_relevance_in_proportion_to_its_inputs() -> None:
    a = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0, 1.0, -1.0], dtype=torch.float64, requires_grad=True)
    relevance = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64)
    total = (a + b).detach()

    output = stabilised_sum(a, b, 0.5)
    grad_a, grad_b = torch.autograd.grad(output, (a, b), relevance / total)

    # Sums of small integers are exact in binary floating point; each share is a few products
    # and quotients of them, ≤ 4 roundings apart on either side.
    torch.testing.assert_close(output.detach(), total, rtol=0, atol=0)
    shares = relevance / torch.where(total >= 0, total + 0.5, total - 0.5)
    torch.testing.assert_close(a.detach() * grad_a, a.detach() * shares, rtol=8 * EPS64, atol=0)
    torch.testing.assert_close(b.detach() * grad_b, b.detach() * shares, rtol=8 * EPS64, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_folding_batch_norm_into_a_convolution(bias: bool) -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, bias=bias)
    norm = nn.BatchNorm2d(8)
    randomise(norm)
    uniform(norm.bias, -1, 1)
    pair = nn.Sequential(conv, norm).double().eval().requires_grad_(False)
    before = {name: tensor.clone() for name, tensor in pair.state_dict().items()}
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)

    folded = fold_batch_norm(conv, norm)

    assert_folds(folded, pair, x, fan_in=3 * 3 * 3)
    assert folded.bias is not None and not folded.weight.requires_grad
    for name, tensor in pair.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert (conv.bias is None) != bias


def test_folding_batch_norm_into_a_grouped_convolution_and_a_linear_layer() -> None:
    torch.manual_seed(5)
    for layer, norm, x in (
        (nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), torch.randn(2, 4, 6, 6)),
        (nn.Linear(5, 3), nn.BatchNorm1d(3), torch.randn(4, 5)),
    ):
        randomise(norm)
        pair = nn.Sequential(layer, norm).double().eval().requires_grad_(False)
        folded = fold_batch_norm(layer, norm)  # type: ignore[arg-type]
        assert_folds(folded, pair, x.double(), fan_in=layer.weight[0].numel())


def assert_folds(folded: nn.Module, pair: nn.Sequential, x: torch.Tensor, *, fan_in: int) -> None:
    """`folded` computes `pair` within the float64 rounding of the two ways round.

    Either side sums ≤ fan_in + 1 products and a few BatchNorm terms, each scaled by at most
    |γ| / σ: ≲ (fan_in + 8) eps64 of the magnitudes summed. A wrong scale or shift (even ε left
    out of σ) is off by 1e-6 of them or more.
    """
    layer, norm = pair
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).abs()
    bias = 0 if layer.bias is None else layer.bias.abs()
    shape = (-1, *[1] * (x.ndim - 2))
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            summed = F.conv2d(
                x.abs(), layer.weight.abs(), None, layer.stride, layer.padding, 1, layer.groups
            )
        else:
            summed = F.linear(x.abs(), layer.weight.abs())
        magnitude = (summed + (bias + norm.running_mean.abs()).reshape(shape)) * scale.reshape(
            shape
        ) + norm.bias.abs().reshape(shape)
        deviation = (folded(x) - pair(x)).abs()
    assert folded.weight.dtype == torch.float64
    assert bool((deviation <= (fan_in + 8) * EPS64 * magnitude).all())
