"""The faithfulness figures `evaluate: true` adds to each explanation (SPEC §10), and their cost.

A map is tested by what its most relevant pixels do to the model (Petsiuk et al., BMVC 2018):
pixels are removed (deletion) or restored (insertion) most relevant first, in
`EVALUATION_STEPS` equal steps of the image's pixels, and the target's softmax probability is
read after each step.
"""

from pydantic import BaseModel, Field

EVALUATION_STEPS = 10
"""Steps of the deletion and insertion curves: 0 %, 10 %, …, 100 % of the pixels."""

TOP_SHARE = 0.1
"""The share of the map's pixels whose removal `top10_drop` measures: the curve's first step."""

EVALUATION_PASSES = 2 * (EVALUATION_STEPS + 1)
"""Forward passes per map: every point of the deletion and the insertion curve."""


class Evaluation(BaseModel):
    """How faithful one map is to the model, for its target class."""

    deletion_auc: float = Field(
        description="area under the target's probability as the map's most relevant pixels are "
        "replaced by the method's baseline (black unless the method's `baseline` or `fill` "
        "says), over the fraction removed (trapezoid rule); lower is more faithful"
    )
    insertion_auc: float = Field(
        description="area under the target's probability as the most relevant pixels are "
        "restored into a blurred copy of the image (σ = 5 % of its longer side); higher is "
        "more faithful"
    )
    top10_drop: float = Field(
        description="the target's probability on the image minus that with the top 10 % of "
        "the map replaced by the method's baseline; higher is more faithful"
    )


EVALUATE_CLASSIFIERS_ONLY = (
    "`evaluate` applies to classification models: the deletion and insertion curves follow one "
    "class's probability, which a segmentation model does not give"
)
"""Why `evaluate` is refused on a segmentation model (by the gateway, and the worker again)."""
