"""DeepLIFT (Shrikumar et al. 2017) with the Rescale rule, on the model's canonical form.

One forward pass runs the inputs and their baselines as one batch, [x; x0]; the backward pass
then carries DeepLIFT multipliers instead of gradients. Each ReLU passes Δout/Δin (its gradient
where |Δin| < `EPSILON`) and each max-pool hands Δout to the winning input; linear layers,
BatchNorm in eval mode, residual sums and concatenations keep their gradient, which is their
exact multiplier. The attribution (x - x0) × multiplier then sums to f(x) - f(x0) for the target
(completeness). The reference half of the batch is a constant: its gradient is zero.

The rules replace every ReLU application of the canonical form, so this works on models that
reuse one ReLU module (torchvision's ResNet), which Captum's `DeepLift` refuses, and on `F.relu`.
Captum has the same max-pool rule but loses it where a ReLU module feeds the max-pool directly
(its hooks keep the max-pool's plain gradient), as in the demo model, whose Captum maps then miss
completeness by up to 5 %. Other nonlinearities (sigmoid, SiLU, `F.max_pool2d` calls, ...) fall
back to their gradient and break completeness.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from schemas.methods.deeplift import DeepLiftParams
from workers.methods.base import AttributionMap, AttributionMethod, Batch, target_score
from workers.methods.baselines import make_baseline
from workers.methods.canonical import rewritten_form
from workers.methods.registry import register

# Below this |Δin| the ratio Δout/Δin is ill-conditioned and the gradient stands in (Captum's).
EPSILON = 1e-10


def _halves(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = tensor.shape[0] // 2
    return tensor[:half], tensor[half:]


def _with_constant_reference(multiplier: torch.Tensor) -> torch.Tensor:
    return torch.cat([multiplier, torch.zeros_like(multiplier)])


class _RescaleReLUFunction(torch.autograd.Function):
    """relu on [x; x0]; backward: the input half's gradient times Δrelu/Δin."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor) -> torch.Tensor:
        outputs = inputs.clamp(min=0)
        ctx.save_for_backward(inputs, outputs)
        return outputs

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        inputs, outputs = ctx.saved_tensors
        x, x0 = _halves(inputs)
        y, y0 = _halves(outputs)
        delta_in = x - x0
        small = delta_in.abs() < EPSILON
        slope = torch.where(small, (x > 0).to(x.dtype), (y - y0) / torch.where(small, 1, delta_in))
        return _with_constant_reference(_halves(grad_output)[0] * slope)


class _RescaleMaxPool2dFunction(torch.autograd.Function):
    """max_pool2d on [x; x0]; backward: each window's Δout goes to the winner of whichever of x
    and x0 has the larger maximum, divided by Δin there (the gradient where |Δin| is tiny).

    This is Captum's maxpool rule, with the windows' shares summed where windows overlap (Captum
    unpools, which keeps one of them and so loses completeness on overlapping pools).
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        outputs, indices = F.max_pool2d(
            inputs,
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            ceil_mode=pool.ceil_mode,
            return_indices=True,
        )
        ctx.save_for_backward(inputs, outputs, indices)
        return outputs

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        inputs, outputs, indices = ctx.saved_tensors
        x, x0 = _halves(inputs)
        y, y0 = _halves(outputs)
        winner, winner0 = _halves(indices)
        grad = _halves(grad_output)[0]
        top = torch.maximum(y, y0)
        shares = _unpool(grad * (top - y0), winner, x) + _unpool(grad * (y - top), winner0, x)
        delta_in = x - x0
        small = delta_in.abs() < EPSILON
        multiplier = torch.where(
            small, _unpool(grad, winner, x), shares / torch.where(small, 1, delta_in)
        )
        return _with_constant_reference(multiplier), None


def _unpool(values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`values` (N, C, h, w) added at the flat input positions `indices`, shaped like `like`."""
    flat = like.new_zeros(like.shape[:2] + (like.shape[2] * like.shape[3],))
    flat.scatter_add_(2, indices.flatten(2), values.flatten(2))
    return flat.view_as(like)


class RescaleReLU(nn.Module):
    """A ReLU whose backward pass carries DeepLIFT Rescale multipliers over a [x; x0] batch."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _RescaleReLUFunction.apply(inputs)


class RescaleMaxPool2d(nn.Module):
    """The max-pool `pool` with DeepLIFT's max-pool multipliers over a [x; x0] batch."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _RescaleMaxPool2dFunction.apply(inputs, self.pool)


def _rescale(_name: str, module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.ReLU):
        return RescaleReLU()
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        return RescaleMaxPool2d(module)
    return None


def deeplift_attributions(
    model: nn.Module, inputs: torch.Tensor, baselines: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(x - x0) × DeepLIFT multiplier of each sample's target logit, shaped like `inputs`."""
    rescaled = rewritten_form(model, "deeplift", _rescale)
    batch = torch.cat([inputs, baselines]).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = rescaled(batch)
        score = target_score(logits[: inputs.shape[0]], targets)
        (multipliers,) = torch.autograd.grad(score, batch)
    return (inputs - baselines) * multipliers[: inputs.shape[0]]


@register
class DeepLift(AttributionMethod[DeepLiftParams]):
    """DeepLIFT-Rescale attributions from `baseline`, summed over channels; signed.

    The map sums to the target logit's change from the baseline to the input. Baselines come
    from `baselines.make_baseline`, exact where the model's normalisation is given.
    """

    def attribute(self, batch: Batch, params: DeepLiftParams) -> AttributionMap:
        baselines = make_baseline(
            params.baseline, batch.inputs, seed=params.seed, normalisation=batch.normalisation
        )
        attributions = deeplift_attributions(batch.model, batch.inputs, baselines, batch.targets)
        return AttributionMap(attributions.sum(dim=1).to(torch.float32), signed=params.is_signed())
