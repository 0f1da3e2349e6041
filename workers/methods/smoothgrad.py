"""SmoothGrad (Smilkov et al. 2017): a gradient method's maps averaged over noisy inputs."""

import torch

from schemas.methods.smoothgrad import SmoothGradParams
from workers.deadline import check_deadline
from workers.methods.base import AttributionMap, AttributionMethod, Batch, copies_per_pass
from workers.methods.registry import get_method, register


@register
class SmoothGrad(AttributionMethod[SmoothGradParams]):
    """The mean over `samples` noisy copies x + ε of the `base` method's map; ε ~ N(0, σ²) per
    pixel and channel, σ = `noise` × (max − min) of the row's normalised input.

    The base runs with `SmoothGradParams.base_params`: its defaults (integrated_gradients: 50
    steps from black, not refined), and this method's `abs` where it has one.
    `abs=True` averages |map| (unsigned); `abs=False` averages the signed maps. The noise comes
    from a CPU generator seeded with `seed`, one (C, H, W) draw per copy, and is shared by every
    row of the batch, so a map depends on its own image and target only.
    """

    def attribute(self, batch: Batch, params: SmoothGradParams) -> AttributionMap:
        inputs, samples = batch.inputs, params.samples
        base = get_method(params.base)
        base_params = params.base_params()
        generator = torch.Generator().manual_seed(params.seed)
        spans = inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))
        sigmas = (params.noise * spans).view(1, -1, 1, 1, 1)
        total = inputs.new_zeros((inputs.shape[0], *inputs.shape[2:]), dtype=torch.float32)
        samples_per_pass = copies_per_pass(inputs)
        for start in range(0, samples, samples_per_pass):
            check_deadline()
            count = min(samples_per_pass, samples - start)
            # Drawn one sample at a time so the draws do not depend on the pass size.
            noise = torch.stack(
                [torch.randn(inputs.shape[1:], generator=generator) for _ in range(count)]
            ).to(inputs)
            noisy = (inputs.detach()[None] + sigmas * noise[:, None]).flatten(0, 1)
            copies = batch.with_inputs(noisy, batch.targets.repeat(count))
            maps = base.attribute(copies, base_params).values.view(count, *total.shape)
            total += (maps.abs() if params.abs else maps).sum(dim=0)
        return AttributionMap(total / samples, signed=params.is_signed())
