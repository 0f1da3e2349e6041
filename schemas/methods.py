"""The catalogue of attribution methods: ids, descriptions, parameters and cost.

Each method's parameters are one pydantic model here; the gateway validates requests with it,
`GET /v1/methods` publishes its JSON Schema, and the worker resolves defaults with it.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Baseline = Literal["black", "blur", "mean", "uniform"]


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LayerParams(MethodParams):
    layer: str | None = Field(
        default=None, description="module name; the model's default CAM layer if unset"
    )


class GradCamParams(LayerParams):
    """Grad-CAM: gradient-weighted activations of one convolutional layer."""


class SaliencyParams(MethodParams):
    """Vanilla gradient of the target logit with respect to the input."""

    abs: bool = Field(
        default=True, description="absolute gradient (max over channels) or signed (sum)"
    )


class MethodSpec(BaseModel):
    """What `GET /v1/methods` says about one method."""

    id: str
    name: str
    description: str
    reference: str
    passes: str = Field(description="cost in forward/backward passes per target")
    signed: bool = Field(description="whether the map's sign carries meaning")
    parameters: dict[str, object] = Field(description="JSON Schema of `params.<id>`")


class _Entry(BaseModel):
    params: type[MethodParams]
    name: str
    description: str
    reference: str
    passes: str
    signed: bool


_CATALOGUE: dict[str, _Entry] = {
    "gradcam": _Entry(
        params=GradCamParams,
        name="Grad-CAM",
        description="Class activation map of a convolutional layer, weighted by the spatial "
        "mean of the target's gradient; coarse, class-discriminative.",
        reference="Selvaraju et al., ICCV 2017",
        passes="1 forward + 1 backward to the layer",
        signed=False,
    ),
    "saliency": _Entry(
        params=SaliencyParams,
        name="Saliency (vanilla gradient)",
        description="Gradient of the target logit with respect to the input pixels.",
        reference="Simonyan et al., ICLR Workshop 2014",
        passes="1 forward + 1 backward to the input",
        signed=False,
    ),
}

PARAMS_BY_METHOD: dict[str, type[MethodParams]] = {
    method_id: entry.params for method_id, entry in _CATALOGUE.items()
}


def method_catalogue() -> list[MethodSpec]:
    """Every method the service offers, in a stable order."""
    return [
        MethodSpec(
            id=method_id,
            name=entry.name,
            description=entry.description,
            reference=entry.reference,
            passes=entry.passes,
            signed=entry.signed,
            parameters=entry.params.model_json_schema(),
        )
        for method_id, entry in _CATALOGUE.items()
    ]
