"""What the method tests check again and again: map deviations, untouched models, devices."""

import torch
from torch import nn

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""Every device a method must run on here: CUDA variants run wherever CUDA exists."""


def max_relative_deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest |actual - expected| per sample, relative to that sample's map range."""
    spans = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
    assert bool((spans > 0).all()), "a reference map is flat; the comparison would be empty"
    return float(((actual - expected).abs().flatten(1).amax(1) / spans).max())


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
