"""KServe's v1 explain protocol: `POST /v1/models/{id}:explain` (SPEC §3).

Each instance is one image, explained as its own job; `parameters` holds the explain options that
apply to all of them, and an instance's own `target` or `dicom` wins over the shared ones.
"""

from typing import Annotated

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from schemas.dicom import DicomOptions
from schemas.explain import (
    ExplainOptions,
    ExplainParameters,
    Explanation,
    ModelRef,
    Prediction,
    ValidTarget,
)

MAX_INSTANCES = 64
"""Instances one request may carry: each is a job, so one request cannot fill a model's queue."""


def _unwrapped_b64(value: object) -> object:
    """`{"b64": "…"}`, binary data in JSON as TensorFlow Serving and KServe clients send it, as
    its string; anything else as it came."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return value["b64"]
    return value


Base64Image = Annotated[
    str,
    Field(min_length=1),
    BeforeValidator(_unwrapped_b64),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "object",
                    "properties": {"b64": {"type": "string", "minLength": 1}},
                    "required": ["b64"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]
"""Base64 image bytes, plain or as `{"b64": "…"}`."""


class KServeInstance(BaseModel):
    """One image and what is particular to it."""

    model_config = ConfigDict(extra="forbid")

    image: Base64Image = Field(
        validation_alias=AliasChoices("image", "data"),
        description='base64 of PNG, JPEG or DICOM bytes, plain or as {"b64": "…"}; also '
        "accepted as `data`, the field TorchServe's KServe examples use",
    )
    target: ValidTarget | None = Field(
        default=None, description="this image's target; `parameters.target` when absent"
    )
    dicom: DicomOptions | None = Field(
        default=None, description="frame and window of a DICOM image; only with DICOM images"
    )


class KServeExplainRequest(BaseModel):
    """`{"instances": [{"image": …}, …], "parameters": {…}}`."""

    model_config = ConfigDict(extra="forbid")

    instances: list[KServeInstance] = Field(min_length=1, max_length=MAX_INSTANCES)
    parameters: ExplainParameters = Field(
        default_factory=ExplainParameters,
        description="the explain options every instance shares: methods, params, target, output",
    )

    def options(self, model: str, instance: KServeInstance) -> ExplainOptions:
        """The options of one instance's job: the shared ones with the instance's own."""
        shared = self.parameters
        return ExplainOptions(
            model=model,
            methods=shared.methods,
            target=shared.target if instance.target is None else instance.target,
            params=shared.params,
            output=shared.output,
            evaluate=shared.evaluate,
            dicom=instance.dicom,
        )


class KServeExplainResponse(BaseModel):
    """One entry per instance, in order, in each list."""

    predictions: list[list[Prediction]]
    explanations: list[list[Explanation]]
    model: ModelRef
    job_ids: list[str] = Field(
        description="each instance's job: `GET /v1/jobs/{id}` has its timings and provenance"
    )
