"""The catalogue of attribution methods: ids, descriptions, parameters and cost."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GradCamParams(BaseModel):
    """Grad-CAM: gradient-weighted activations of one convolutional layer."""

    model_config = ConfigDict(extra="forbid")

    layer: str | None = Field(
        default=None, description="module name; the model's default CAM layer if unset"
    )


class SaliencyParams(BaseModel):
    """Vanilla gradient of the target logit with respect to the input."""

    model_config = ConfigDict(extra="forbid")

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
    signed: bool
    parameters: dict[str, object] = Field(description="JSON Schema of `params.<id>`")


MethodId = Literal["gradcam", "saliency"]

PARAMS_BY_METHOD: dict[str, type[BaseModel]] = {
    "gradcam": GradCamParams,
    "saliency": SaliencyParams,
}

_DESCRIPTIONS: dict[str, tuple[str, str, str, str, bool]] = {
    "gradcam": (
        "Grad-CAM",
        "Class activation map of a convolutional layer, weighted by the spatial mean of the "
        "target's gradient; coarse, class-discriminative.",
        "Selvaraju et al., ICCV 2017",
        "1 forward + 1 backward to the layer",
        False,
    ),
    "saliency": (
        "Saliency (vanilla gradient)",
        "Gradient of the target logit with respect to the input pixels.",
        "Simonyan et al., ICLR Workshop 2014",
        "1 forward + 1 backward to the input",
        False,
    ),
}


def method_catalogue() -> list[MethodSpec]:
    """Every method the service offers, in a stable order."""
    return [
        MethodSpec(
            id=method_id,
            name=name,
            description=description,
            reference=reference,
            passes=passes,
            signed=signed,
            parameters=PARAMS_BY_METHOD[method_id].model_json_schema(),
        )
        for method_id, (name, description, reference, passes, signed) in _DESCRIPTIONS.items()
    ]
