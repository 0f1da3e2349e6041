"""What every attribution method declares to the gateway: its parameters, metadata and cost.

A method's half in `schemas` is one `MethodParams` subclass, registered with `@register_method`:
its fields are the request's `params.<id>`, its class variables what `GET /v1/methods` says about
it. The gateway validates requests with it and the worker receives it, typed, in `attribute`.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.evaluation import EVALUATION_PASSES

Baseline = Literal["black", "blur", "mean", "uniform"]

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A random generator's seed: 0 to 2⁶³ − 1, a signed 64-bit integer as every consumer takes."""

REFERENCE_PASS_PIXELS = 256 * 256
"""A job's cost counts a pass over a model input of this many pixels as one pass."""

Need = Literal[
    "gradients", "cam_layer", "relu", "linear_head", "canonical_form", "piecewise_linear"
]
"""What a method needs of a model: backward passes (the PyTorch module, not ONNX Runtime alone),
a layer with a spatial or token output, ReLU activations, a global-average-pool + linear head, a
form the propagation rules can rewrite (sequential convolutions, ReLUs, pools, residual sums), or
nonlinearities that are all ReLUs and max-pools (no GELU, softmax attention or LayerNorm), the
only ones whose propagation rules are implemented."""


@dataclass(frozen=True)
class Workload:
    """What a job asks of a method: one model input of `height` × `width` pixels, explained for
    `targets` classes, on a model whose CAM layers have `layer_channels` (by name; the default
    layer is `default_layer`)."""

    height: int
    width: int
    targets: int
    layer_channels: Mapping[str, int] = field(default_factory=dict)
    default_layer: str = ""

    def channels(self, layer: str | None) -> int | None:
        """The channels of `layer` (the default layer if None), or None where unknown."""
        return self.layer_channels.get(layer or self.default_layer)


RANDOMISATION_PASS = 0.5
"""The rank correlation, once the model's head is re-drawn, below which a method's maps pass the
cascading model-parameter randomisation check (`docs/quality.md`)."""


def randomisation_caveat(rho: float, why: str) -> str:
    """The caveat of a method whose maps failed the randomisation check on demo-lesions' held-out
    images: `rho`, their mean rank correlation with the trained model's once the head is
    re-drawn, and `why`."""
    return (
        "Fails the model-parameter randomisation check (Adebayo et al., NeurIPS 2018) on "
        f"demo-lesions: its maps keep a rank correlation of {rho:.2f} with the trained model's "
        f"once the head is re-drawn, above the check's {RANDOMISATION_PASS} (docs/quality.md). "
        + why
    )


class MethodParams(BaseModel):
    """Parameters of one method, as a request gives them, and the method's catalogue entry.

    Unknown names, values of another JSON type (`true` for a number, `1.0` for an integer) and
    non-finite numbers (`Infinity`, `NaN`, or `1e999`, which JSON readers turn into infinity)
    are refused: each would otherwise reach the worker as something other than what was asked.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: ClassVar[str]
    """The method's id, as requests name it."""
    title: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    cost: ClassVar[str]
    """The cost in passes per target, in words, as `GET /v1/methods` states it."""
    signed: ClassVar[bool]
    """Whether the map's sign carries meaning, with the default parameters."""
    needs: ClassVar[frozenset[Need]] = frozenset({"gradients"})
    class_specific: ClassVar[bool] = True
    """Whether the map depends on the target class; False for a method that explains what the
    model sees whatever the class (every target gets the same map)."""
    caveats: ClassVar[tuple[str, ...]] = ()
    """What a reader of the map should know that its definition does not say, with the source."""

    def is_signed(self) -> bool:
        """Whether the map these parameters give is signed; `signed` unless a parameter says."""
        return self.signed

    def passes(self, work: Workload) -> int:
        """Forward plus backward passes (each counts one) over one model input for `work`'s
        targets, at most: what `cost` states."""
        return 2 * work.targets


class LayerParams(MethodParams):
    """A method that reads one layer's activations: the CAM family."""

    needs: ClassVar[frozenset[Need]] = frozenset({"gradients", "cam_layer"})

    layer: str | None = Field(
        default=None, description="module name; the model's default CAM layer if unset"
    )


class MethodSpec(BaseModel):
    """What `GET /v1/methods` says about one method."""

    id: str
    name: str
    description: str
    reference: str
    passes: str = Field(description="cost in forward/backward passes per target")
    signed: bool = Field(description="whether the map's sign carries meaning")
    needs: list[Need] = Field(default_factory=list, description="what the method needs of a model")
    class_specific: bool = Field(
        default=True, description="whether the map depends on the target (false: one map for all)"
    )
    caveats: list[str] = Field(
        default_factory=list,
        description="known limits of the method's maps, each with its source (docs/quality.md)",
    )
    evaluation_passes: int | None = Field(
        default=EVALUATION_PASSES,
        description='forward passes per map that `"evaluate": true` adds (deletion and '
        "insertion curves); null where the method is not requested on explanations",
    )
    parameters: dict[str, object] = Field(description="JSON Schema of `params.<id>`")
    endpoint: str = Field(
        default="POST /v1/explanations", description="where the method is requested"
    )


_REGISTRY: dict[str, type[MethodParams]] = {}

PARAMS_BY_METHOD: Mapping[str, type[MethodParams]] = MappingProxyType(_REGISTRY)
"""Every registered method's parameters model by its id."""

ParamsModel = TypeVar("ParamsModel", bound=type[MethodParams])


def register_method(params: ParamsModel) -> ParamsModel:
    """Class decorator: offer the method whose parameters model this is under its `method` id."""
    for name in ("method", "title", "summary", "reference", "cost", "signed"):
        if not hasattr(params, name):
            raise TypeError(f"{params.__name__} does not declare {name!r}")
    if params.method in _REGISTRY:
        raise ValueError(f"method {params.method!r} is registered twice")
    _REGISTRY[params.method] = params
    return params


def method_spec(params: type[MethodParams]) -> MethodSpec:
    """The catalogue entry of the method whose parameters model is `params`."""
    return MethodSpec(
        id=params.method,
        name=params.title,
        description=params.summary,
        reference=params.reference,
        passes=params.cost,
        signed=params().is_signed(),
        needs=sorted(params.needs),
        class_specific=params.class_specific,
        caveats=list(params.caveats),
        parameters=params.model_json_schema(),
    )


def method_catalogue() -> list[MethodSpec]:
    """Every method the service offers, by id."""
    return [method_spec(PARAMS_BY_METHOD[method]) for method in sorted(PARAMS_BY_METHOD)]


def job_passes(
    params: Mapping[str, MethodParams], work: Workload, *, evaluate: bool = False
) -> float:
    """A job's cost: each method's passes over its model input for its targets, summed, in passes
    over `REFERENCE_PASS_PIXELS` pixels; with `evaluate`, each map's `EVALUATION_PASSES` too."""
    scale = work.height * work.width / REFERENCE_PASS_PIXELS
    per_map = EVALUATION_PASSES * work.targets if evaluate else 0
    return scale * sum(method.passes(work) + per_map for method in params.values())
