"""The catalogue of attribution methods: ids, descriptions, parameters and cost.

Each method's parameters are one `MethodParams` model in a module of this package, registered
with `@register_method`; importing the package imports every module in it, so offering a new
method is adding its file. The gateway validates requests with these models, `GET /v1/methods`
publishes them, and the worker hands each method its own, typed.
"""

import importlib
import pkgutil

from schemas.methods.contract import (
    MAX_SEED,
    PARAMS_BY_METHOD,
    REFERENCE_PASS_PIXELS,
    Baseline,
    LayerParams,
    MethodParams,
    MethodSpec,
    Need,
    Seed,
    Workload,
    job_passes,
    method_catalogue,
    method_spec,
    register_method,
)

__all__ = [
    "MAX_SEED",
    "PARAMS_BY_METHOD",
    "REFERENCE_PASS_PIXELS",
    "Baseline",
    "LayerParams",
    "MethodParams",
    "MethodSpec",
    "Need",
    "Seed",
    "Workload",
    "job_passes",
    "method_catalogue",
    "method_spec",
    "register_method",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
