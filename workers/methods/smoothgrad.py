"""SmoothGrad (Smilkov et al. 2017): a gradient method's maps averaged over noisy inputs."""

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from schemas.methods import PARAMS_BY_METHOD
from workers.deadline import check_deadline
from workers.methods.base import AttributionMap, AttributionMethod, Normalisation, copies_per_pass

# A `max_steps` at or below `steps` turns refinement off.
_BASE_OVERRIDES: Mapping[str, Mapping[str, object]] = {"integrated_gradients": {"max_steps": 2}}


class SmoothGrad(AttributionMethod):
    """The mean over `samples` noisy copies x + ε of the `base` method's map; ε ~ N(0, σ²) per
    pixel and channel, σ = `noise` × (max − min) of the row's normalised input.

    The base runs with its default parameters (integrated_gradients: 50 steps from black, not
    refined: the noise average, not each copy, is what must be accurate), except that a base
    with an `abs` parameter (saliency, guided_backprop) gets this method's.
    `abs=True` averages |map| (unsigned); `abs=False` averages the signed maps. The noise comes
    from a CPU generator seeded with `seed`, one (C, H, W) draw per copy, and is shared by every
    row of the batch, so a map depends on its own image and target only.
    """

    id = "smoothgrad"

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Mapping[str, object],
        normalisation: Normalisation | None = None,
    ) -> AttributionMap:
        base_id = cast(str, params["base"])
        absolute = cast(bool, params["abs"])
        samples = cast(int, params["samples"])
        # Imported here: the registry imports this module.
        from workers.methods import get_method

        base = get_method(base_id)
        overrides: dict[str, object] = dict(_BASE_OVERRIDES.get(base_id, {}))
        if "abs" in PARAMS_BY_METHOD[base_id].model_fields:
            overrides["abs"] = absolute
        base_params = base.resolve_params(overrides, cam_layer="")  # no base takes a layer
        generator = torch.Generator().manual_seed(cast(int, params["seed"]))
        spans = inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))
        sigmas = (cast(float, params["noise"]) * spans).view(1, -1, 1, 1, 1)
        total = inputs.new_zeros((inputs.shape[0], *inputs.shape[2:]), dtype=torch.float32)
        signed = False
        samples_per_pass = copies_per_pass(inputs)
        for start in range(0, samples, samples_per_pass):
            check_deadline()
            count = min(samples_per_pass, samples - start)
            # Drawn one sample at a time so the draws do not depend on the pass size.
            noise = torch.stack(
                [torch.randn(inputs.shape[1:], generator=generator) for _ in range(count)]
            ).to(inputs)
            noisy = (inputs.detach()[None] + sigmas * noise[:, None]).flatten(0, 1)
            result = base.attribute(model, noisy, targets.repeat(count), base_params, normalisation)
            maps = result.values.view(count, *total.shape)
            total += (maps.abs() if absolute else maps).sum(dim=0)
            signed = result.signed and not absolute
        return AttributionMap(total / samples, signed=signed)
