"""Guided backpropagation (Springenberg et al. 2015): only positive gradients through ReLUs."""

from typing import Any

import torch
from torch import nn

from schemas.methods.guided_backprop import GuidedBackpropParams
from workers.methods.base import input_gradient
from workers.methods.canonical import rewritten_form
from workers.methods.passes import Need, PassMethod, Recorded, register_rule
from workers.methods.registry import register
from workers.methods.saliency import reduce_channels

GUIDED = "guided"


class _GuidedReLUFunction(torch.autograd.Function):
    """relu forward; backward passes a gradient only where it and the forward input are > 0."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor) -> torch.Tensor:
        outputs = inputs.clamp(min=0)
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (outputs,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (outputs > 0)


class GuidedReLU(nn.Module):
    """A ReLU whose backward pass is guided backpropagation's."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _GuidedReLUFunction.apply(inputs)


def _guided(_name: str, module: nn.Module) -> nn.Module | None:
    return GuidedReLU() if isinstance(module, nn.ReLU) else None


def guided_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The guided-backpropagation gradient of each sample's target logit, shaped like `inputs`.

    Every ReLU of the model's canonical form is guided, whichever way the model calls it.
    """
    return input_gradient(guided_model(model), inputs, targets)


def guided_model(model: nn.Module) -> nn.Module:
    """The model's canonical form with every ReLU guided: its autograd backward is the rule."""
    return rewritten_form(model, "guided_backprop", _guided)


register_rule(GUIDED, guided_model)


@register
class GuidedBackprop(PassMethod[GuidedBackpropParams]):
    """`abs=True`: max over channels of |guided gradient|, unsigned; `abs=False`: channel sum,
    signed (as saliency reduces the plain gradient)."""

    def needs(self, params: GuidedBackpropParams, cam_layer: str) -> tuple[Need, ...]:  # noqa: ARG002
        return (Need(GUIDED),)

    def from_pass(
        self,
        recorded: Recorded,
        params: GuidedBackpropParams,
        cam_layer: str,  # noqa: ARG002 - no layer
    ) -> torch.Tensor:
        return reduce_channels(recorded.gradient(Need(GUIDED)), absolute=params.abs)
