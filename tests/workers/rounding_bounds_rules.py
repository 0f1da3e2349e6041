"""Where a map decides something from a float: how far each such decision is from a tie."""

import torch
from torch import nn
from torch.nn import functional as F


def max_pool_tie_gap(model: nn.Module, inputs: torch.Tensor) -> float:
    """The smallest gap between the largest and the second largest value of any max-pool window
    whose largest value is positive, over one forward pass of `inputs`.

    A window after a ReLU whose values are all 0 ties exactly, in any arithmetic, and its winner
    carries no relevance (relevance follows the activation, 0 there); every other winner changes
    the map if rounding picks another, which it cannot where the gap is far above rounding.
    """
    gaps: list[float] = [torch.inf]

    def before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.MaxPool2d)
        padding = module.padding if isinstance(module.padding, int) else module.padding[0]
        values = F.pad(args[0].detach(), [padding] * 4, value=-torch.inf).flatten(0, 1)[:, None]
        windows = F.unfold(values, module.kernel_size, stride=module.stride)
        top = windows.topk(2, dim=1).values
        positive = top[:, 0] > 0
        if bool(positive.any()):
            gaps.append(float((top[:, 0] - top[:, 1])[positive].min()))

    pools = [module for module in model.modules() if isinstance(module, nn.MaxPool2d)]
    handles = [pool.register_forward_pre_hook(before) for pool in pools]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert pools, "no max-pool; the check would be empty"
    return min(gaps)
