"""The implemented methods by id, and `explain`, the one entry point the worker calls.

Each method's module registers its class with `@register`; `workers.methods` imports every module
of the package, so implementing a method is adding its file.
"""

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from torch import nn

from schemas.methods import PARAMS_BY_METHOD, MethodParams
from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    Forward,
    ForwardOnlyMethod,
    Normalisation,
    UnknownMethodError,
    UnsupportedModelError,
    attribute_jointly,
    check_batch,
    class_probabilities,
)

_REGISTRY: dict[str, AttributionMethod[Any]] = {}

METHODS: Mapping[str, AttributionMethod[Any]] = MappingProxyType(_REGISTRY)
"""Every implemented method by its id."""

Method = TypeVar("Method", bound=type[AttributionMethod[Any]])


def register(method: Method) -> Method:
    """Class decorator: implement the method of the class's parameters model."""
    method_id = method.params_model.method
    if PARAMS_BY_METHOD.get(method_id) is not method.params_model:
        raise TypeError(f"{method.__name__}: {method_id!r} is not registered in schemas.methods")
    if method_id in _REGISTRY:
        raise ValueError(f"method {method_id!r} is implemented twice")
    _REGISTRY[method_id] = method()
    return method


def get_method(method: str) -> AttributionMethod[Any]:
    """The implementation of `method`, or `UnknownMethodError`."""
    try:
        return METHODS[method]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise UnknownMethodError(f"unknown method {method!r}; known: {known}") from None


def unsupported_methods(model: nn.Module) -> dict[str, str]:
    """The methods that do not apply to `model`, by id (sorted), each with the reason."""
    refusals = ((method_id, METHODS[method_id].refusal(model)) for method_id in sorted(METHODS))
    return {method_id: reason for method_id, reason in refusals if reason is not None}


def available_methods(model: nn.Module) -> list[str]:
    """The ids of the methods that work on `model`, sorted."""
    unsupported = unsupported_methods(model)
    return [method_id for method_id in sorted(METHODS) if method_id not in unsupported]


def resolve(method: str, params: Mapping[str, object], *, cam_layer: str) -> MethodParams:
    """The parameters of `method` as `explain` applies them, typed: defaults filled in, and a
    missing `layer` set to `cam_layer`. Raises `MethodParameterError` for a bad value."""
    return get_method(method).resolve(params, cam_layer=cam_layer)


def resolve_params(
    method: str, params: Mapping[str, object], *, cam_layer: str
) -> dict[str, object]:
    """Every parameter of `method` as `explain` applies it, as provenance states them."""
    return resolve(method, params, cam_layer=cam_layer).model_dump()


def explain(  # noqa: PLR0913 - the keyword-only settings of a `Batch`, spelled out for callers
    method: str,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Mapping[str, object] | MethodParams,
    *,
    cam_layer: str,
    forward: Forward | None = None,
    normalisation: Normalisation | None = None,
    probability: Forward = class_probabilities,
) -> AttributionMap:
    """Attribution maps of `method` for a batch, one target class per sample (see `Batch`).

    `params` is what the request gave, or what `resolve` made of it (then it is not validated
    again). Without `forward`, forward-only methods call `model`. Raises `UnknownMethodError`,
    `MethodParameterError` or `TargetError` for bad requests, and `UnsupportedModelError` with
    the reason for a method that does not apply to the model.
    """
    implementation, resolved = _applied(method, model, params, cam_layer)
    batch = _batch(model, inputs, targets, forward, cam_layer, normalisation, probability)
    return implementation.attribute(batch, resolved)


def explain_jointly(  # noqa: PLR0913 - as `explain`
    methods: Sequence[str],
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Sequence[Mapping[str, object] | MethodParams],
    *,
    cam_layer: str,
    forward: Forward | None = None,
    normalisation: Normalisation | None = None,
    probability: Forward = class_probabilities,
) -> list[AttributionMap]:
    """`explain` for several forward-only methods (`ForwardOnlyMethod`: occlusion, RISE) over
    one batch, their forward passes shared (`attribute_jointly`): each method's maps are those
    `explain` gives it alone, but for the rounding of a forward call's other rows."""
    applied = [
        _applied(method, model, method_params, cam_layer)
        for method, method_params in zip(methods, params, strict=True)
    ]
    joint: list[tuple[ForwardOnlyMethod[Any], MethodParams]] = []
    for implementation, resolved in applied:
        if not isinstance(implementation, ForwardOnlyMethod):
            raise TypeError(f"{implementation.id} does not run on forward passes alone")
        joint.append((implementation, resolved))
    batch = _batch(model, inputs, targets, forward, cam_layer, normalisation, probability)
    return attribute_jointly(batch, joint)


def _batch(  # noqa: PLR0913 - the fields of a `Batch`
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    forward: Forward | None,
    cam_layer: str,
    normalisation: Normalisation | None,
    probability: Forward,
) -> Batch:
    """The checked batch; forward passes through `model` unless `forward` is given."""
    check_batch(inputs, targets)
    return Batch(
        model=model,
        inputs=inputs,
        targets=targets.to(inputs.device),
        forward=model if forward is None else forward,
        cam_layer=cam_layer,
        normalisation=normalisation,
        probability=probability,
    )


def _applied(
    method: str, model: nn.Module, params: Mapping[str, object] | MethodParams, cam_layer: str
) -> tuple[AttributionMethod[Any], MethodParams]:
    """The method's implementation and its parameters as applied; a method that does not apply
    to `model` raises `UnsupportedModelError` with the reason, before anything runs."""
    implementation = get_method(method)
    refusal = implementation.refusal(model)
    if refusal is not None:
        raise UnsupportedModelError(refusal)
    resolved = (
        params
        if isinstance(params, implementation.params_model)
        else implementation.resolve(dict(params), cam_layer=cam_layer)
    )
    return implementation, resolved
