"""Attribution methods by id, and `explain`, the one entry point the worker calls."""

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn

from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    MethodParameterError,
    TargetError,
    UnknownMethodError,
    check_batch,
)
from workers.methods.gradcam import GradCam
from workers.methods.saliency import Saliency

__all__ = [
    "METHODS",
    "AttributionMap",
    "AttributionMethod",
    "MethodParameterError",
    "TargetError",
    "UnknownMethodError",
    "available_methods",
    "explain",
    "get_method",
    "resolve_params",
]

METHODS: Mapping[str, AttributionMethod] = MappingProxyType(
    {method.id: method for method in (GradCam(), Saliency())}
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
) -> AttributionMap:
    """Attribution maps of `method` for a batch, one target class per sample.

    `inputs` is a normalised (N, C, H, W) batch and `targets` an int64 (N,) tensor; `model` is in
    eval mode with parameters that do not require grad, and is left unchanged. `cam_layer` is the
    layer CAM methods use unless `params` names another. Raises `UnknownMethodError`,
    `MethodParameterError` or `TargetError` for bad requests.
    """
    implementation = get_method(method)
    resolved = implementation.resolve_params(params, cam_layer=cam_layer)
    check_batch(inputs, targets)
    return implementation.attribute(model, inputs, targets.to(inputs.device), resolved)
