"""Activation maximisation: the visualization request and its response (SPEC §4, `activation_max`).

`POST /v1/models/{id}/visualizations` synthesises the input that maximises a class logit or the
mean activation of one channel of a layer (Olah et al., "Feature Visualization", Distill 2017).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict

from schemas.explain import ModelRef
from schemas.methods import MethodParams, MethodSpec, Seed

ACTIVATION_MAX = "activation_max"
"""The method id of activation maximisation, which the visualizations endpoint serves."""

DEFAULT_SCALES = [0.95, 0.975, 1.0, 1.025, 1.05]
# No model has more classes or channels; the worker checks the model's own count.
MAX_INDEX = 2**31 - 1
# Far past any useful weight, and well inside float32, in which the loss is computed.
MAX_REGULARISER_WEIGHT = 1e3

# Settings that shape the whole optimisation; requests optimised in one batch must agree on them.
_BATCH_FIELDS = ("steps", "lr", "size", "jitter", "scale", "rotate", "l2", "tv", "decorrelate")


def _given(name: str) -> JsonDict:
    """JSON Schema: `name` is present and not null."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


# `_one_objective` as JSON Schema, so that the documented body is exactly what is accepted.
_ONE_OBJECTIVE: JsonDict = {
    "anyOf": [
        {"allOf": [_given("target"), {"not": _given("layer")}, {"not": _given("channel")}]},
        {"allOf": [_given("layer"), _given("channel"), {"not": _given("target")}]},
    ]
}


class VisualizationParams(MethodParams):
    """What to maximise, and how: exactly one of `target` or `layer` + `channel`."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_ONE_OBJECTIVE)

    target: int | None = Field(
        default=None, ge=0, le=MAX_INDEX, description="class index whose logit to raise"
    )
    layer: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="module name (as in named_modules) whose channel to raise",
    )
    channel: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INDEX,
        description="channel of `layer` whose mean activation to raise",
    )
    steps: int = Field(default=256, ge=1, le=4096, description="Adam steps")
    lr: float = Field(default=0.05, gt=0.0, le=1.0, description="Adam learning rate")
    size: int | None = Field(
        default=None,
        ge=16,
        le=1024,
        description="side of a square image; the model's input height×width if unset",
    )
    seed: Seed = Field(
        default=0, description="on CPU, the same request batched alike gives the same image"
    )
    jitter: int = Field(default=8, ge=0, le=64, description="random shift per step, pixels")
    scale: list[Annotated[float, Field(ge=0.25, le=4.0)]] = Field(
        default_factory=lambda: list(DEFAULT_SCALES),
        min_length=1,
        max_length=32,
        description="random zoom per step, drawn from this list",
    )
    rotate: float = Field(
        default=5.0, ge=0.0, le=180.0, description="random rotation per step, ±degrees"
    )
    l2: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_REGULARISER_WEIGHT,
        description="weight of the mean squared offset from grey",
    )
    tv: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_REGULARISER_WEIGHT,
        description="weight of the mean total variation",
    )
    decorrelate: bool = Field(
        default=True,
        description="Fourier (1/f) parameterisation and, for RGB, decorrelated colour; "
        "false optimises raw pixels",
    )

    @model_validator(mode="after")
    def _one_objective(self) -> "VisualizationParams":
        by_layer = self.layer is not None or self.channel is not None
        if by_layer and (self.layer is None or self.channel is None):
            raise ValueError("`layer` and `channel` go together")
        if by_layer == (self.target is not None):
            raise ValueError("give exactly one of `target` or `layer` + `channel`")
        return self

    def batch_key(self) -> tuple[object, ...]:
        """The settings requests must share to be optimised as one batch."""
        return tuple(
            tuple(value) if isinstance(value, list) else value
            for value in (getattr(self, name) for name in _BATCH_FIELDS)
        )


class ClassObjective(BaseModel):
    kind: Literal["class"] = "class"
    class_index: int
    label: str


class ChannelObjective(BaseModel):
    kind: Literal["channel"] = "channel"
    layer: str
    channel: int


VisualizationTarget = Annotated[ClassObjective | ChannelObjective, Field(discriminator="kind")]


class VisualizationProvenance(BaseModel):
    """What an auditor needs to reproduce the image."""

    model_sha256: str
    service_version: str
    device: str
    params: VisualizationParams


class VisualizationResponse(BaseModel):
    """The synthesised image, what it reached, and how it was made."""

    model: ModelRef
    image_png: str = Field(description="base64 PNG: grayscale for 1-channel models, else RGB")
    target: VisualizationTarget
    activation: float = Field(description="the maximised logit or channel mean on the PNG")
    probability: float | None = Field(
        description="softmax probability of the target class on the PNG; null for a channel"
    )
    steps: int
    compute_ms: float
    provenance: VisualizationProvenance


def activation_max_spec() -> MethodSpec:
    """`activation_max` as `GET /v1/methods` lists it (served by the visualizations endpoint)."""
    return MethodSpec(
        id=ACTIVATION_MAX,
        name="Activation maximisation",
        description="Synthesises the input that maximises a class logit or a layer channel's "
        "mean activation: POST /v1/models/{id}/visualizations. Fourier parameterisation with "
        "decorrelated colour, random jitter, scale and rotation each step.",
        reference="Olah et al., Distill 2017",
        passes="`steps` forward + backward passes to the input",
        signed=False,
        evaluation_passes=None,
        parameters=VisualizationParams.model_json_schema(),
        endpoint="POST /v1/models/{id}/visualizations",
    )
