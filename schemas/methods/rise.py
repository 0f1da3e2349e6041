"""RISE's parameters and catalogue entry."""

from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from schemas.methods.contract import (
    MethodParams,
    Need,
    Seed,
    Workload,
    randomisation_caveat,
    register_method,
)


@register_method
class RiseParams(MethodParams):
    """RISE: the target's score averaged over random smooth masks."""

    method = "rise"
    title = "RISE"
    summary = (
        "Mean of random smooth masks weighted by the target's softmax probability on the image "
        "under each mask (black outside it); forward passes only, served by ONNX Runtime for "
        "ONNX models."
    )
    reference = "Petsiuk et al., BMVC 2018"
    cost = "`masks` forward per image, shared by its targets"
    signed = False
    caveats = (
        randomisation_caveat(
            0.73,
            "When the scores stop varying with the masks, the map becomes the seeded masks' own "
            "coverage pattern, the same before and after.",
        ),
    )
    needs: ClassVar[frozenset[Need]] = frozenset()

    masks: int = Field(default=1000, ge=1, le=8000)
    cell: int = Field(default=7, ge=2, le=64, description="mask grid cells per side")
    p: float = Field(default=0.5, gt=0.0, lt=1.0, description="probability a cell is kept")
    seed: Seed = 0
    batch_size: int = Field(default=64, ge=1, le=1024)

    @override
    def passes(self, work: Workload) -> int:
        return self.masks
