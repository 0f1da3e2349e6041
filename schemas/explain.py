"""The explain request and its response (SPEC §3)."""

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from schemas.dicom import AppliedDicom, DicomOptions
from schemas.dicomweb import DicomwebSource, DicomwebStore, StoredObjects
from schemas.evaluation import Evaluation
from schemas.methods import PARAMS_BY_METHOD, MethodParams
from schemas.regions import REGION_TARGET_SCHEMA, RegionKind, RegionTarget

MAX_TOP_K = 5
BASE64_PATTERN = r"^(data:[^,]*,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Standard base64 with its padding, optionally behind a data URL's header."""
_TOP_K = re.compile(r"^top([1-5])$")

Target = str | int | list[int] | RegionTarget
# As requests give it: `true` is not the class index 1, nor `1.0`.
StrictTarget = StrictStr | StrictInt | list[StrictInt] | RegionTarget


def check_target(target: Target) -> Target:
    """A target as the API takes it: "top1".."top5", a class index, or a list of distinct ones."""
    if isinstance(target, str) and not _TOP_K.match(target):
        raise ValueError(f'target must be "top1".."top{MAX_TOP_K}", an index or a list')
    if isinstance(target, int) and target < 0:
        raise ValueError("a class index is never negative")
    if isinstance(target, list):
        if not 1 <= len(target) <= MAX_TOP_K:
            raise ValueError(f"a target list holds 1 to {MAX_TOP_K} class indices")
        if any(t < 0 for t in target) or len(set(target)) != len(target):
            raise ValueError("class indices must be distinct and non-negative")
    return target


CLASS_INDEX_SCHEMA: JsonDict = {"type": "integer", "minimum": 0}
TARGET_SCHEMA: JsonDict = {
    "anyOf": [
        {"type": "string", "pattern": f"^top[1-{MAX_TOP_K}]$"},
        CLASS_INDEX_SCHEMA,
        {
            "type": "array",
            "items": CLASS_INDEX_SCHEMA,
            "minItems": 1,
            "maxItems": MAX_TOP_K,
            "uniqueItems": True,
        },
        REGION_TARGET_SCHEMA,
    ]
}
"""`check_target` as JSON Schema, so that the documented target is exactly what is accepted."""

ValidTarget = Annotated[StrictTarget, AfterValidator(check_target), WithJsonSchema(TARGET_SCHEMA)]

METHOD_IDS = sorted(PARAMS_BY_METHOD)
MAX_METHODS = len(METHOD_IDS)
"""Each method at most once (a repeat is refused), so at most every method."""
METHODS_SCHEMA: JsonDict = {
    "type": "array",
    "items": {"type": "string", "enum": [*METHOD_IDS]},
    "minItems": 1,
    "maxItems": MAX_METHODS,
    "uniqueItems": True,
}
"""The `methods` list as `_known_methods` checks it: known ids, each once."""
DEFAULT_METHOD = "gradcam"
PARAMS_SCHEMA: JsonDict = {
    "type": "object",
    "properties": {method: PARAMS_BY_METHOD[method].model_json_schema() for method in METHOD_IDS},
    "additionalProperties": False,
    "description": "each requested method's parameters, under its id; only for methods that "
    "`methods` lists (not stated as a JSON Schema conditional, which generators of test data "
    "such as schemathesis cannot use)",
}
"""`params`: each method's own parameters, under its id."""


# `_raw_scores_at_model_size` as JSON Schema: normalised, or at the model's size.
_RAW_SCORES_AT_MODEL_SIZE: JsonDict = {
    "anyOf": [
        {"properties": {"normalize": {"const": True}}},
        {"required": ["size"], "properties": {"size": {"const": "model"}}},
    ]
}


def target_classes(target: Target) -> list[int] | None:
    """The classes a target names explicitly, or None when it is a "topK"."""
    if isinstance(target, int):
        return [target]
    if isinstance(target, RegionTarget):
        return [target.class_index]
    if isinstance(target, list):
        return list(target)
    return None


def target_top_k(target: Target) -> int:
    """K of a "topK" target; 0 for explicit classes."""
    return int(target[3:]) if isinstance(target, str) else 0


def most_probable(probabilities: Sequence[float], k: int) -> list[int]:
    """The `k` classes of highest probability, most probable first; a tie goes to the lower
    index."""
    return sorted(range(len(probabilities)), key=lambda c: -probabilities[c])[:k]


def resolve_target(target: Target, probabilities: Sequence[float]) -> list[int]:
    """The classes a target explains for one image, given its class probabilities: the ones it
    names, or its K most probable."""
    classes = target_classes(target)
    return classes if classes is not None else most_probable(probabilities, target_top_k(target))


DicomKind = Literal["secondary_capture", "parametric_map", "segmentation"]
"""A derived DICOM object a DICOM input can also be answered with (`output.dicom`)."""
DEFAULT_SEGMENTATION_THRESHOLD = 0.1


class OutputOptions(BaseModel):
    """How the maps come back: overlays for people, score arrays for programs. Booleans and
    numbers are strict: `false` is not an alpha of 0, nor `1` a true."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_RAW_SCORES_AT_MODEL_SIZE)

    overlay: bool = Field(default=True, strict=True)
    heatmap: bool = Field(default=False, strict=True)
    scores: Literal["json", "base64", "none"] = "json"
    colormap: Literal["jet", "viridis", "inferno", "gray", "coolwarm"] = "jet"
    alpha: float = Field(default=0.45, ge=0.0, le=1.0, strict=True)
    size: Literal["original", "model"] = "original"
    grid: int | None = Field(
        default=None, ge=1, le=256, strict=True, description="pool scores to N×N"
    )
    normalize: bool = Field(
        default=True,
        strict=True,
        description="scale scores to [0, 1] (unsigned maps) or [-1, 1] (signed); false returns "
        'the method\'s raw attribution, at `size: "model"` only, pooled to `grid` by cell sums',
    )
    dicom: list[DicomKind] = Field(
        default_factory=list,
        max_length=3,
        json_schema_extra={"uniqueItems": True},
        description="for a DICOM image only: derived DICOM objects to return, base64 Part 10 "
        "files, in each explanation's `dicom` (secondary_capture: the overlay burned in; "
        "parametric_map: the normalised scores as float32; segmentation: the top `threshold` "
        "share of the map)",
    )
    threshold: float = Field(
        default=DEFAULT_SEGMENTATION_THRESHOLD,
        gt=0.0,
        lt=1.0,
        strict=True,
        description="the share of the map's highest scores the segmentation marks",
    )

    @model_validator(mode="after")
    def _raw_scores_at_model_size(self) -> "OutputOptions":
        if not self.normalize and self.size != "model":
            # Resampling a raw map to the input's size would change what its values sum to.
            raise ValueError(
                'raw scores (normalize: false) come at the model\'s input size: add size: "model"'
            )
        if len(set(self.dicom)) != len(self.dicom):
            raise ValueError("a derived DICOM kind is listed twice")
        return self


class ExplainParameters(BaseModel):
    """What to compute and how to answer, for any image: methods, their parameters, the target
    and the output. The `parameters` of a KServe explain request."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(
        default=[DEFAULT_METHOD],
        min_length=1,
        max_length=MAX_METHODS,
        json_schema_extra=METHODS_SCHEMA,
    )
    target: ValidTarget = Field(
        default="top1",
        description='"top1", "topK" (K ≤ 5), a class index, or a list of them; for a '
        'segmentation model also a class and a region: {"class": 3, "region": "predicted"}, '
        '{"class": 3, "box": [x0, y0, x1, y1]} or {"class": 3, "mask": "<base64 PNG>"}',
    )
    params: dict[str, dict[str, object]] = Field(
        default_factory=dict, json_schema_extra=PARAMS_SCHEMA
    )
    output: OutputOptions = Field(default_factory=OutputOptions)
    evaluate: bool = Field(
        default=False,
        strict=True,
        description="also measure each map's faithfulness (`evaluation` in each explanation); "
        "costs `evaluation_passes` forward passes per map (`GET /v1/methods`)",
    )
    _method_params: dict[str, MethodParams] = PrivateAttr(default_factory=dict)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in PARAMS_BY_METHOD]
        if unknown:
            known = ", ".join(sorted(PARAMS_BY_METHOD))
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {known}")
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods

    @model_validator(mode="after")
    def _params_for_requested_methods(self) -> "ExplainParameters":
        for method in self.params:
            if method not in self.methods:
                raise ValueError(f"params given for {method!r}, which is not requested")
        # Validated here, once: the typed parameters are what the rest of the gateway reads.
        self._method_params = {
            method: PARAMS_BY_METHOD[method].model_validate(self.params.get(method, {}))
            for method in self.methods
        }
        return self

    def method_params(self) -> dict[str, MethodParams]:
        """Every requested method's parameters, typed, with defaults filled in."""
        return dict(self._method_params)

    def applied_params(self) -> dict[str, dict[str, object]]:
        """Every requested method's parameters with defaults filled in, as the job carries them."""
        return {method: params.model_dump() for method, params in self._method_params.items()}

    def class_indices(self) -> list[int] | None:
        """The explicitly requested classes, or None when the target is a top-K."""
        return target_classes(self.target)

    def top_k(self) -> int:
        """K of a "topK" target; 0 for explicit classes."""
        return target_top_k(self.target)


class ExplainOptions(ExplainParameters):
    """Everything an explain request says besides the image itself."""

    model: str = Field(min_length=1, max_length=64, examples=["demo-lesions"])
    dicom: DicomOptions | None = Field(
        default=None, description="frame and window of a DICOM image; only with DICOM images"
    )
    source: DicomwebSource | None = Field(
        default=None, description="an instance to fetch by WADO-RS, instead of `image`"
    )
    store: DicomwebStore | None = Field(
        default=None,
        description="send the derived DICOM objects to this server by STOW-RS; never answered "
        "from the result cache",
    )


# `_image_or_source` as JSON Schema: an image and no source, or a source and no image.
_IMAGE_OR_SOURCE: JsonDict = {
    "oneOf": [
        {
            "required": ["image"],
            "properties": {"image": {"type": "string"}, "source": {"type": "null"}},
        },
        {
            "required": ["source"],
            "properties": {"source": {"type": "object"}, "image": {"type": "null"}},
        },
    ]
}


class ExplainRequest(ExplainOptions):
    """`POST /v1/explanations` and `POST /v1/jobs` as JSON."""

    model_config = ConfigDict(json_schema_extra=_IMAGE_OR_SOURCE)

    image: str | None = Field(
        default=None,
        min_length=1,
        description="base64 of PNG, JPEG or DICOM bytes (or a data URL); or give `source`",
        # Documented, not enforced here: bad base64 is a 400, as an undecodable image is.
        json_schema_extra={"format": "byte", "pattern": BASE64_PATTERN},
    )

    @model_validator(mode="after")
    def _image_or_source(self) -> "ExplainRequest":
        if (self.image is None) == (self.source is None):
            raise ValueError("give exactly one of `image` and `source`")
        return self

    def options(self) -> ExplainOptions:
        """The request without its image, as already validated."""
        options = ExplainOptions.model_construct(
            **{name: getattr(self, name) for name in ExplainOptions.model_fields}
        )
        options._method_params = self.method_params()
        return options


class Prediction(BaseModel):
    class_index: int
    label: str
    score: float = Field(
        description="the class's probability under the model's `output.activation`: softmax "
        "(the labels' probabilities sum to 1) or sigmoid (each label on its own); with `none`, "
        "the logit itself; segmentation: the class's share of the pixels"
    )
    logit: float = Field(
        description="the model's raw output for the class; segmentation: its mean logit over "
        "the pixels predicted as it"
    )


class ExplanationTarget(BaseModel):
    class_index: int
    label: str
    region: RegionKind | None = Field(
        default=None,
        description="segmentation: the pixels whose class logits were summed (`predicted`, "
        "`box` or `mask`); none for a classifier",
    )


class Scores(BaseModel):
    """An attribution map as numbers: `values` ([H][W] floats) or `base64` (float32 LE)."""

    shape: list[int]
    values: list[list[float]] | None = None
    base64: str | None = None
    dtype: Literal["float32"] = "float32"
    min: float
    max: float
    signed: bool
    normalized: bool = Field(
        description="scaled to [0, 1] or [-1, 1]; false for a raw map (`output.normalize`)"
    )


DegenerateKind = Literal["all_zero", "constant", "non_finite", "not_converged"]
"""Why a map deserves no trust as it stands: zero everywhere, one value everywhere, NaN or ±inf
in it, or (Integrated Gradients) a quadrature that did not converge within `max_steps`."""


class MapChecks(BaseModel):
    """What the service measured about one map. Every figure is optional: a method reports
    those it can, and a map that came out degenerate carries `degenerate` and `warning`."""

    completeness_gap: float | None = Field(
        default=None,
        description="integrated_gradients: |Σ map − (f(x) − f(baseline))| / |f(x) − f(baseline)| "
        "for the target logit f, before normalisation",
    )
    steps: int | None = Field(default=None, description="integrated_gradients: the steps it took")
    convergence: float | None = Field(
        default=None,
        description="integrated_gradients: the largest difference between the map at `steps` "
        "and at half as many (the trapezoid rule on every other point), as a share of the map's "
        "range; null when `steps` is odd and no refinement ran",
    )
    degenerate: DegenerateKind | None = Field(
        default=None, description="why the map deserves no trust as it stands; null when none"
    )
    warning: str | None = Field(
        default=None, description="the reason, in words, when `degenerate` is set"
    )


class Explanation(BaseModel):
    method: str
    target: ExplanationTarget
    overlay_png: str | None = None
    heatmap_png: str | None = None
    scores: Scores | None = None
    compute_ms: float
    dicom: dict[DicomKind, str] | None = Field(
        default=None,
        description="the derived DICOM objects `output.dicom` asked for: kind → base64 of the "
        "DICOM Part 10 file",
    )
    checks: MapChecks | None = Field(
        default=None,
        description="What the service measured about the map, where it can: integrated_gradients "
        "reports its completeness gap, steps and convergence; any method's degenerate map (all "
        "zero, constant, non-finite) carries `degenerate` and a `warning`. Null when there is "
        "nothing to report.",
    )
    evaluation: Evaluation | None = Field(
        default=None,
        description='faithfulness figures, with `"evaluate": true`; null for a degenerate map '
        "whose pixels have no order to delete them by (all zero, constant, non-finite): its "
        "`checks.warning` says why",
    )


class ModelRef(BaseModel):
    id: str
    version: str


class Timings(BaseModel):
    queue_ms: float
    compute_ms: float
    render_ms: float
    total_ms: float
    request_id: str | None = Field(
        default=None,
        description="`X-Request-ID` of the request answered: the one that queued the job, or "
        "the one answered from the result cache",
    )


class Provenance(BaseModel):
    """What an auditor needs to reproduce a map."""

    model_sha256: str
    service_version: str
    device: str
    params: dict[str, dict[str, object]]
    target: Target
    output: OutputOptions
    dicom: AppliedDicom | None = Field(
        default=None,
        description="for a DICOM image: the frame and the VOI transformation as applied (the "
        "request's window, the file's VOI LUT or window, or the full range of its values); no "
        "window for a colour image",
    )


class ExplainResponse(BaseModel):
    job_id: str
    model: ModelRef
    predictions: list[Prediction]
    explanations: list[Explanation]
    timings: Timings
    provenance: Provenance
    stored: StoredObjects | None = Field(
        default=None, description="for a `store` request: the instances the server stored"
    )
    cached: bool = Field(
        default=False,
        description="answered from the result cache: the maps of an identical earlier request "
        "by the same key; `timings` are those of that computation",
    )
