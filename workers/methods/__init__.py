"""Attribution methods by id, and `explain`, the one entry point the worker calls.

Every module of this package is imported here, so each method's `@register` runs: a new method is
its parameters model in `schemas.methods` and its file here.
"""

import importlib
import pkgutil

from workers.methods.base import (
    AttributionMap,
    AttributionMethod,
    Batch,
    MethodParameterError,
    Normalisation,
    TargetError,
    UnknownMethodError,
)
from workers.methods.registry import (
    METHODS,
    available_methods,
    explain,
    explain_jointly,
    get_method,
    register,
    resolve,
    resolve_params,
    unsupported_methods,
)

__all__ = [
    "METHODS",
    "AttributionMap",
    "AttributionMethod",
    "Batch",
    "MethodParameterError",
    "Normalisation",
    "TargetError",
    "UnknownMethodError",
    "available_methods",
    "explain",
    "explain_jointly",
    "get_method",
    "register",
    "resolve",
    "resolve_params",
    "unsupported_methods",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
