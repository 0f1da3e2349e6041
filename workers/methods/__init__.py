"""Attribution methods by id, and `explain`, the one entry point the worker calls."""

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn

from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Forward,
    ForwardOnlyMethod,
    MethodParameterError,
    Normalisation,
    TargetError,
    UnknownMethodError,
    check_batch,
)
from workers.methods.cam import Cam
from workers.methods.deeplift import DeepLift
from workers.methods.gradcam import GradCam
from workers.methods.gradcam_pp import GradCamPlusPlus
from workers.methods.guided_backprop import GuidedBackprop
from workers.methods.guided_gradcam import GuidedGradCam
from workers.methods.integrated_gradients import IntegratedGradients
from workers.methods.lrp import Lrp
from workers.methods.occlusion import Occlusion
from workers.methods.rise import Rise
from workers.methods.saliency import Saliency
from workers.methods.scorecam import ScoreCam
from workers.methods.smoothgrad import SmoothGrad

__all__ = [
    "METHODS",
    "AttributionMap",
    "AttributionMethod",
    "MethodParameterError",
    "Normalisation",
    "TargetError",
    "UnknownMethodError",
    "available_methods",
    "explain",
    "get_method",
    "resolve_params",
]

METHODS: Mapping[str, AttributionMethod] = MappingProxyType(
    {
        method.id: method
        for method in (
            GradCam(),
            Saliency(),
            Occlusion(),
            Rise(),
            Cam(),
            GradCamPlusPlus(),
            ScoreCam(),
            SmoothGrad(),
            IntegratedGradients(),
            Lrp(),
            GuidedBackprop(),
            GuidedGradCam(),
            DeepLift(),
        )
    }
)
"""Every implemented method by its id."""


def get_method(method: str) -> AttributionMethod:
    """The implementation of `method`, or `UnknownMethodError`."""
    try:
        return METHODS[method]
    except KeyError:
        known = ", ".join(METHODS)
        raise UnknownMethodError(f"unknown method {method!r}; known: {known}") from None


def available_methods(model: nn.Module) -> list[str]:
    """The ids of the methods that work on `model`."""
    return [method_id for method_id, method in METHODS.items() if method.supports(model)]


def resolve_params(
    method: str, params: Mapping[str, object], *, cam_layer: str
) -> dict[str, object]:
    """Every parameter of `method` as `explain` applies it: defaults filled in, for provenance."""
    return get_method(method).resolve_params(params, cam_layer=cam_layer)


def explain(
    method: str,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Mapping[str, object],
    *,
    cam_layer: str,
    forward: Forward | None = None,
    normalisation: Normalisation | None = None,
) -> AttributionMap:
    """Attribution maps of `method` for a batch, one target class per sample.

    `inputs` is a normalised (N, C, H, W) batch and `targets` an int64 (N,) tensor; `model` is in
    eval mode with parameters that do not require grad, and is left unchanged. `cam_layer` is the
    layer CAM methods use unless `params` names another. `forward`, the model's logits of a batch
    without gradients (ONNX Runtime for ONNX models), serves the methods that need only forward
    passes; without it they call `model`. `normalisation` is how the inputs were normalised (black
    baselines and z-box bounds need it; without it they are estimated per image). Raises
    `UnknownMethodError`, `MethodParameterError` or `TargetError` for bad requests.
    """
    implementation = get_method(method)
    resolved = implementation.resolve_params(params, cam_layer=cam_layer)
    check_batch(inputs, targets)
    targets = targets.to(inputs.device)
    if forward is not None and isinstance(implementation, ForwardOnlyMethod):
        return implementation.attribute(forward, inputs, targets, resolved, normalisation)
    return implementation.attribute(model, inputs, targets, resolved, normalisation)
