"""What the method tests check again and again: map deviations, untouched models, devices."""

import torch
from torch import nn

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""Every device a method must run on here: CUDA variants run wherever CUDA exists."""

EPS32 = torch.finfo(torch.float32).eps
"""The float32 machine epsilon, 2⁻²³ ≈ 1.2e-7: one rounding's relative error is at most half it."""


def max_relative_deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest |actual - expected| per sample, relative to that sample's map range."""
    spans = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
    assert bool((spans > 0).all()), "a reference map is flat; the comparison would be empty"
    return float(((actual - expected).abs().flatten(1).amax(1) / spans).max())


def float32_rounding(
    expected: torch.Tensor, roundings: int, magnitude: torch.Tensor | None = None
) -> float:
    """The most `max_relative_deviation` from `expected` that `roundings` float32 roundings of
    values as large as `magnitude`'s (default: `expected`'s) can make: roundings × eps32 ×
    max |value| / range of `expected`, the largest over samples.

    For maps computed the same way on the same inputs in float64, where only their rounding to
    float32 on the way out and the float32 sums after it separate them.
    """
    flat = expected.flatten(1)
    spans = flat.amax(1) - flat.amin(1)
    largest = (expected if magnitude is None else magnitude).flatten(1).abs().amax(1)
    return float((roundings * EPS32 * largest / spans).max())


def assert_untouched(model: nn.Module, *, frozen: bool = False) -> None:
    """No parameter gradient and no hook left behind; with `frozen`, the model is also still in
    eval mode with no parameter requiring grad, as the worker serves it."""
    if frozen:
        assert not model.training
    for parameter in model.parameters():
        assert parameter.grad is None
        if frozen:
            assert not parameter.requires_grad
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
        assert not module._backward_pre_hooks
