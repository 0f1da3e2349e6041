"""Occlusion's parameters and catalogue entry."""

import math
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from typing_extensions import override

from schemas.methods.contract import (
    MethodParams,
    Need,
    Workload,
    randomisation_caveat,
    register_method,
)


@register_method
class OcclusionParams(MethodParams):
    """Occlusion: the drop of the target's score when a patch is covered."""

    method = "occlusion"
    title = "Occlusion"
    summary = (
        "Drop of the target logit when a sliding square patch is filled (black: the image's "
        "darkest value, its mean, or a blurred copy), averaged over the patches covering each "
        "pixel; forward passes only, served by ONNX Runtime for ONNX models."
    )
    reference = "Zeiler & Fergus, ECCV 2014"
    cost = "1 + (ceil((side - window) / stride) + 1)^2 forward per image, shared by its targets"
    signed = True
    caveats = (
        randomisation_caveat(
            0.63,
            "On that model a black patch anywhere raises the target's score, so the map holds "
            "almost no positive relevance: choose the `fill` for the model.",
        ),
    )
    needs: ClassVar[frozenset[Need]] = frozenset()

    window: int = Field(
        default=16,
        ge=1,
        le=512,
        description="patch side in model pixels; a window larger than the image covers all of it",
    )
    stride: int = Field(default=8, ge=1, le=512)
    fill: Literal["black", "mean", "blur"] = "black"
    batch_size: int = Field(default=64, ge=1, le=1024)

    @field_validator("stride")
    @classmethod
    def _windows_cover_every_pixel(cls, stride: int, info: ValidationInfo) -> int:
        if stride > info.data.get("window", stride):
            raise ValueError("stride must not exceed window: some pixels would stay uncovered")
        return stride

    @override
    def passes(self, work: Workload) -> int:
        def windows(side: int) -> int:
            window = min(self.window, side)
            return math.ceil((side - window) / self.stride) + 1

        return 1 + windows(work.height) * windows(work.width)
