"""LRP rules on single layers against a matrix-form re-implementation, and BatchNorm folding.

The reference writes each layer as a dense matrix M (n_out × n_in, found by feeding it the basis
vectors) and applies the rules of Montavon et al. (2019) to the contributions z_kj = M_kj x_j in
numpy, in float64.
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


def ref_epsilon(m: np.ndarray, b: np.ndarray, x: np.ndarray, r: np.ndarray, eps: float):
    contributions = m * x[None, :]
    z = contributions.sum(1) + b
    return contributions.T @ (r / stab(z, eps))


def ref_alpha_beta(alpha: float, beta: float) -> Callable[..., np.ndarray]:
    def rule(m: np.ndarray, b: np.ndarray, x: np.ndarray, r: np.ndarray, eps: float):
        contributions = m * x[None, :]
        positive, negative = np.maximum(contributions, 0), np.minimum(contributions, 0)
        z_pos = positive.sum(1) + np.maximum(b, 0)
        z_neg = negative.sum(1) + np.minimum(b, 0)
        return alpha * positive.T @ (r / stab(z_pos, eps)) - beta * negative.T @ (
            r / stab(z_neg, eps)
        )

    return rule


def pixel_bounds(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised images of pixel values 0 and 1, per channel, broadcast to `shape`."""
    mean = torch.tensor(MEAN + [0.5], dtype=torch.float64)[: shape[1], None, None]
    std = torch.tensor(STD + [0.25], dtype=torch.float64)[: shape[1], None, None]
    return ((0 - mean) / std).expand(shape[1:])[None], ((1 - mean) / std).expand(shape[1:])[None]


def relevance_through(
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


def check_rule(rule: Rule, reference: Callable[..., np.ndarray], kind: str, x: torch.Tensor, **kw):
    layer = make_layer(kind)
    with torch.no_grad():
        y = layer(x)
    gradient = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    output, relevance = relevance_through(rule, layer, x, gradient, **kw)

    expected = reference(
        dense_matrix(layer, layer.weight),
        dense_bias(layer),
        x.flatten().numpy(),
        (y * gradient).flatten().numpy(),
        rule.epsilon,
    )
    torch.testing.assert_close(output, y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(relevance.flatten().numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).max() > 1e-3, "an empty reference would prove nothing"


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

    def reference(m: np.ndarray, b: np.ndarray, x: np.ndarray, r: np.ndarray, eps: float):
        lo, hi = low.flatten().numpy(), high.flatten().numpy()
        contributions = (
            m * x[None, :] - np.maximum(m, 0) * lo[None, :] - np.minimum(m, 0) * hi[None, :]
        )
        return contributions.T @ (r / stab(contributions.sum(1), eps))

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

    torch.testing.assert_close(per_channel, full)


@pytest.mark.parametrize("kind", KINDS)
def test_flat(kind: str) -> None:
    layer = make_layer(kind)

    def reference(m: np.ndarray, b: np.ndarray, x: np.ndarray, r: np.ndarray, eps: float):
        connections = dense_matrix(layer, torch.ones_like(layer.weight))
        return connections.T @ (r / stab(connections.sum(1), eps))

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
    arriving = float((layer(x) * gradient).sum())

    for rule in (Epsilon(1e-12), AlphaBeta(2.0, 1.0, 1e-12), AlphaBeta(1.0, 0.0, 1e-12)):
        _, relevance = relevance_through(rule, layer, x, gradient, relevance_form=False)
        assert float(relevance.sum()) == pytest.approx(arriving, rel=1e-9)


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

    torch.testing.assert_close(output.detach(), total)
    shares = relevance / torch.where(total >= 0, total + 0.5, total - 0.5)
    torch.testing.assert_close(a.detach() * grad_a, a.detach() * shares)
    torch.testing.assert_close(b.detach() * grad_b, b.detach() * shares)


@pytest.mark.parametrize("bias", [True, False])
def test_folding_batch_norm_into_a_convolution(bias: bool) -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, bias=bias)
    norm = nn.BatchNorm2d(8)
    randomise(norm)
    uniform(norm.bias, -1, 1)
    pair = nn.Sequential(conv, norm).eval().requires_grad_(False)
    before = {name: tensor.clone() for name, tensor in pair.state_dict().items()}
    x = torch.randn(2, 3, 9, 9)

    folded = fold_batch_norm(conv, norm)

    torch.testing.assert_close(folded(x), pair(x), rtol=0, atol=1e-5)
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
        pair = nn.Sequential(layer, norm).eval().requires_grad_(False)
        folded = fold_batch_norm(layer, norm)  # type: ignore[arg-type]
        torch.testing.assert_close(folded(x), pair(x), rtol=0, atol=1e-5)
