"""Region targets of segmentation models (SPEC §3): a class, and the pixels whose logits count."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from pydantic.json_schema import JsonDict

RegionKind = Literal["predicted", "box", "mask"]

Box = tuple[StrictInt, StrictInt, StrictInt, StrictInt]


class RegionTarget(BaseModel):
    """`{"class": c}` with at most one of `region: "predicted"` (the default: the pixels the
    model predicts as `c`), `box: [x0, y0, x1, y1]` (in the input image's pixel coordinates,
    x0 and y0 included, x1 and y1 excluded) or `mask` (a base64 PNG at the input image's size,
    its non-zero pixels the region). The explained score is class `c`'s logit summed over it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    class_index: StrictInt = Field(alias="class", ge=0)
    region: Literal["predicted"] | None = None
    box: Box | None = Field(
        default=None, description="[x0, y0, x1, y1] in the input image's pixels, x1 and y1 excluded"
    )
    mask: str | None = Field(
        default=None, min_length=1, description="base64 PNG at the input image's size"
    )

    @model_validator(mode="after")
    def _one_region(self) -> "RegionTarget":
        given = [name for name in ("region", "box", "mask") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"a region target names one region, not {' and '.join(given)}")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if min(self.box) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError("a box is [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self

    @property
    def kind(self) -> RegionKind:
        if self.box is not None:
            return "box"
        return "mask" if self.mask is not None else "predicted"


REGION_TARGET_SCHEMA: JsonDict = {
    "type": "object",
    "required": ["class"],
    "additionalProperties": False,
    "properties": {
        "class": {"type": "integer", "minimum": 0},
        "region": {"const": "predicted"},
        "box": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": 4,
            "maxItems": 4,
        },
        "mask": {"type": "string", "minLength": 1},
    },
    "maxProperties": 2,
}
"""`RegionTarget` as JSON Schema, as `TARGET_SCHEMA` lists it."""
