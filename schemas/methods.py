"""The catalogue of attribution methods: ids, descriptions, parameters and cost.

Each method's parameters are one pydantic model here; the gateway validates requests with it,
`GET /v1/methods` publishes its JSON Schema, and the worker resolves defaults with it.
"""

import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Baseline = Literal["black", "blur", "mean", "uniform"]

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A random generator's seed: 0 to 2⁶³ − 1, a signed 64-bit integer as every consumer takes."""


REFERENCE_PASS_PIXELS = 256 * 256
"""A job's cost counts a pass over a model input of this many pixels as one pass."""

SCORECAM_CHANNELS = 512
"""The channels Score-CAM's cost assumes of its layer, which the gateway does not know: a ResNet's
last block; smaller layers cost less."""


class MethodParams(BaseModel):
    """Parameters of one method, as a request gives them.

    Unknown names, values of another JSON type (`true` for a number, `1.0` for an integer) and
    non-finite numbers (`Infinity`, `NaN`, or `1e999`, which JSON readers turn into infinity)
    are refused: each would otherwise reach the worker as something other than what was asked.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def passes(self, height: int, width: int, targets: int) -> int:
        """Forward plus backward passes (each counts one) over one image of `height` × `width`
        model pixels explained for `targets` classes, at most: the catalogue's `passes`."""
        return 2 * targets


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


class CamParams(MethodParams):
    """CAM: the linear head's weights over the last feature maps (GAP + linear models only)."""

    def passes(self, height: int, width: int, targets: int) -> int:
        return 1


class GradCamPlusPlusParams(LayerParams):
    """Grad-CAM++: pixel-wise weighted positive gradients."""


class ScoreCamParams(LayerParams):
    """Score-CAM: each activation map, as a mask on the input, weighted by the target's score."""

    batch_size: int = Field(default=32, ge=1, le=256, description="masked inputs per pass")

    def passes(self, height: int, width: int, targets: int) -> int:
        return 2 + SCORECAM_CHANNELS


class GuidedBackpropParams(MethodParams):
    """Guided backpropagation: only positive gradients through positive activations."""

    abs: bool = Field(default=True, description="max over channels of |·| or signed channel sum")


class GuidedGradCamParams(LayerParams):
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM."""

    def passes(self, height: int, width: int, targets: int) -> int:
        return 4 * targets


class SmoothGradParams(MethodParams):
    """SmoothGrad: a gradient method averaged over noisy copies of the input."""

    samples: int = Field(default=25, ge=1, le=256)
    noise: float = Field(default=0.15, ge=0.0, le=1.0, description="σ as a fraction of the range")
    base: Literal["saliency", "integrated_gradients", "guided_backprop", "deeplift"] = "saliency"
    abs: bool = Field(default=True, description="average |attribution| (unsigned) or signed")
    seed: Seed = 0

    def passes(self, height: int, width: int, targets: int) -> int:
        # The base runs with its defaults (integrated_gradients unrefined).
        base = PARAMS_BY_METHOD[self.base]()
        if isinstance(base, IntegratedGradientsParams):
            base = base.model_copy(update={"max_steps": base.steps})
        return self.samples * base.passes(height, width, targets)


class IntegratedGradientsParams(MethodParams):
    """Integrated Gradients: the path integral of gradients from a baseline."""

    steps: int = Field(default=50, ge=2, le=1024, description="quadrature nodes of the first pass")
    tolerance: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest completeness gap |Σ map − (f(x) − f(baseline))| / "
        "|f(x) − f(baseline)| accepted before the steps are doubled",
    )
    max_steps: int = Field(
        default=400,
        ge=2,
        le=4096,
        description="the most steps refinement may reach; at or below `steps`, no refinement",
    )
    baseline: Baseline = "black"
    seed: Seed = Field(default=0, description="for the uniform-noise baseline")

    def passes(self, height: int, width: int, targets: int) -> int:
        # Every refinement doubles the steps and integrates again, at worst up to `max_steps`.
        nodes, steps = self.steps, self.steps
        while 2 * steps <= self.max_steps:
            steps *= 2
            nodes += steps
        return 2 + 2 * nodes * targets


class DeepLiftParams(MethodParams):
    """DeepLIFT with the Rescale rule."""

    baseline: Baseline = "black"
    seed: Seed = Field(default=0, description="for the uniform-noise baseline")

    def passes(self, height: int, width: int, targets: int) -> int:
        return 4 * targets


# Well inside float32, in which relevance is computed; useful values are far smaller.
MAX_LRP_EPSILON = 1e3
MAX_LRP_ALPHA = 1e3


class LrpParams(MethodParams):
    """Layer-wise Relevance Propagation with a named rule composite."""

    composite: Literal["epsilon", "epsilon_plus", "alpha_beta"] = Field(
        default="epsilon_plus",
        description="ε everywhere; ε+: z+ on convolutions, ε on dense layers; αβ on convolutions",
    )
    first_layer: Literal["zbox", "flat", "same"] = Field(
        default="zbox", description="rule at the input layer"
    )
    epsilon: float = Field(
        default=1e-6,
        ge=0.0,
        le=MAX_LRP_EPSILON,
        description="stabiliser added to every pre-activation's magnitude (ε rules)",
    )
    alpha: float = Field(default=2.0, ge=1.0, le=MAX_LRP_ALPHA, description="β = α − 1")

    def passes(self, height: int, width: int, targets: int) -> int:
        shares = 2 if self.composite == "alpha_beta" else 1
        return (2 + shares) * targets


class OcclusionParams(MethodParams):
    """Occlusion: the drop of the target's score when a patch is covered."""

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

    def passes(self, height: int, width: int, targets: int) -> int:
        def windows(side: int) -> int:
            window = min(self.window, side)
            return math.ceil((side - window) / self.stride) + 1

        return 1 + windows(height) * windows(width)


class RiseParams(MethodParams):
    """RISE: the target's score averaged over random smooth masks."""

    masks: int = Field(default=1000, ge=1, le=8000)
    cell: int = Field(default=7, ge=2, le=64, description="mask grid cells per side")
    p: float = Field(default=0.5, gt=0.0, lt=1.0, description="probability a cell is kept")
    seed: Seed = 0
    batch_size: int = Field(default=64, ge=1, le=1024)

    def passes(self, height: int, width: int, targets: int) -> int:
        return self.masks


class MethodSpec(BaseModel):
    """What `GET /v1/methods` says about one method."""

    id: str
    name: str
    description: str
    reference: str
    passes: str = Field(description="cost in forward/backward passes per target")
    signed: bool = Field(description="whether the map's sign carries meaning")
    parameters: dict[str, object] = Field(description="JSON Schema of `params.<id>`")
    endpoint: str = Field(
        default="POST /v1/explanations", description="where the method is requested"
    )


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
    "occlusion": _Entry(
        params=OcclusionParams,
        name="Occlusion",
        description="Drop of the target logit when a sliding square patch is filled (black: "
        "the image's darkest value, its mean, or a blurred copy), averaged over the patches "
        "covering each pixel; forward passes only, served by ONNX Runtime for ONNX models.",
        reference="Zeiler & Fergus, ECCV 2014",
        passes="1 + (ceil((side - window) / stride) + 1)^2 forward per image, shared by its "
        "targets",
        signed=True,
    ),
    "rise": _Entry(
        params=RiseParams,
        name="RISE",
        description="Mean of random smooth masks weighted by the target's softmax probability "
        "on the image under each mask (black outside it); forward passes only, served by ONNX "
        "Runtime for ONNX models.",
        reference="Petsiuk et al., BMVC 2018",
        passes="`masks` forward per image, shared by its targets",
        signed=False,
    ),
    "cam": _Entry(
        params=CamParams,
        name="CAM",
        description="The linear head's weights for the target over the feature maps entering "
        "the global average pool; only for models whose head is global-average-pool + linear.",
        reference="Zhou et al., CVPR 2016",
        passes="1 forward to the pooled features",
        signed=False,
    ),
    "gradcam_pp": _Entry(
        params=GradCamPlusPlusParams,
        name="Grad-CAM++",
        description="Class activation map of a convolutional layer, each channel weighted by "
        "its positive gradients, pixel-wise weighted (closed form for exp(score)).",
        reference="Chattopadhyay et al., WACV 2018",
        passes="1 forward + 1 backward to the layer",
        signed=False,
    ),
    "scorecam": _Entry(
        params=ScoreCamParams,
        name="Score-CAM",
        description="Class activation map of a convolutional layer, each channel weighted by "
        "the rise of the target's softmax probability when its upsampled map masks the input; "
        "forward passes only.",
        reference="Wang et al., CVPR Workshops 2020",
        passes="2 + (channels of the layer, less those with constant maps) forward per image, "
        "shared by its targets",
        signed=False,
    ),
    "smoothgrad": _Entry(
        params=SmoothGradParams,
        name="SmoothGrad",
        description="A gradient method's map (saliency by default) averaged over copies of the "
        "input with Gaussian noise; unsigned unless abs is false.",
        reference="Smilkov et al., ICML Workshop 2017",
        passes="`samples` × the base method's passes",
        signed=False,
    ),
    "integrated_gradients": _Entry(
        params=IntegratedGradientsParams,
        name="Integrated Gradients",
        description="Gradients integrated along the straight path from a baseline to the "
        "input (Gauss-Legendre quadrature), times the difference; sums to the change of the "
        "target logit. Where the sum misses that change by more than `tolerance`, the steps "
        "are doubled for that image, up to `max_steps`; the gap reached is reported.",
        reference="Sundararajan et al., ICML 2017",
        passes="2 forward, then `steps` forward + backward to the input; each doubling adds "
        "twice the last step count, for the images that need it",
        signed=True,
    ),
    "lrp": _Entry(
        params=LrpParams,
        name="Layer-wise Relevance Propagation",
        description="The target logit redistributed layer by layer down to the pixels by a "
        "rule composite (ε, ε+ or αβ; z-box, flat or the same rule at the input layer), with "
        "BatchNorm folded and residual sums split in proportion; relevance sums to about the "
        "logit.",
        reference="Bach et al., PLOS ONE 2015; Montavon et al., 2019",
        passes="1 forward (+1 per rule share) + 1 backward to the input",
        signed=True,
    ),
    "guided_backprop": _Entry(
        params=GuidedBackpropParams,
        name="Guided Backpropagation",
        description="Gradient of the target logit where every ReLU passes back only positive "
        "gradient, and only where its input was positive; sharp, fine-grained, weakly "
        "class-discriminative.",
        reference="Springenberg et al., ICLR Workshop 2015",
        passes="1 forward + 1 backward to the input",
        signed=False,
    ),
    "guided_gradcam": _Entry(
        params=GuidedGradCamParams,
        name="Guided Grad-CAM",
        description="Guided backpropagation (largest magnitude over channels) times Grad-CAM "
        "upsampled to the input: fine detail inside the class-discriminative region.",
        reference="Selvaraju et al., ICCV 2017",
        passes="2 forward + 2 backward (one to the layer, one guided to the input)",
        signed=False,
    ),
    "deeplift": _Entry(
        params=DeepLiftParams,
        name="DeepLIFT (Rescale)",
        description="Difference from a baseline times multipliers carried back by the Rescale "
        "rule (Δout/Δin at each ReLU, winner-takes-the-difference at max-pools); summed over "
        "channels, the map adds up to the target logit's change from the baseline. Works on "
        "models that reuse activation modules.",
        reference="Shrikumar et al., ICML 2017",
        passes="1 forward + 1 backward to the input, on the input and baseline together",
        signed=True,
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


def job_passes(params: Mapping[str, MethodParams], height: int, width: int, targets: int) -> float:
    """A job's cost: each method's passes over its `height` × `width` model input for `targets`
    classes, summed, in passes over `REFERENCE_PASS_PIXELS` pixels."""
    scale = height * width / REFERENCE_PASS_PIXELS
    return scale * sum(method.passes(height, width, targets) for method in params.values())
