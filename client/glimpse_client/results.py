"""Typed answers of the service, mirroring its JSON; maps come out as numpy arrays, images as PIL.

Every model keeps fields it does not know (`extra="allow"`): a newer service adds fields without
breaking an older client. The answers of `explain`, `job` and `visualize` keep their JSON as
`.raw`.
"""

import base64
import io
from enum import StrEnum
from functools import cached_property
from typing import Any, Self

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class _RawAnswer(_Answer):
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        parsed = cls.model_validate(data)
        parsed._raw = data
        return parsed

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object the service answered, as it came."""
        return self._raw


def decode_png(data: str) -> Image.Image:
    """A base64 PNG as a loaded PIL image."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


class Prediction(_Answer):
    class_index: int
    label: str
    score: float
    logit: float | None = None


class ExplanationTarget(_Answer):
    class_index: int
    label: str


class Scores(_Answer):
    """An attribution map as numbers: `values` (nested lists) or `base64` (float32, `shape`)."""

    shape: list[int]
    values: list[list[float]] | None = None
    base64: str | None = None
    dtype: str = "float32"
    min: float
    max: float
    signed: bool
    normalized: bool = True

    def array(self) -> np.ndarray:
        """The map as a float32 array of `shape`, from whichever encoding the service sent."""
        if self.base64 is not None:
            flat = np.frombuffer(base64.b64decode(self.base64), dtype="<f4")
            return flat.reshape(self.shape).astype(np.float32)
        if self.values is not None:
            return np.asarray(self.values, dtype=np.float32).reshape(self.shape)
        raise ValueError("these scores carry neither `values` nor `base64`")


class Evaluation(_Answer):
    """How faithful one map is to the model (`evaluate=True`): the target's probability as the
    map's most relevant pixels are removed (deletion, lower is better) or restored into a
    blurred copy (insertion, higher is better), and its drop at the top 10 % removed."""

    deletion_auc: float
    insertion_auc: float
    top10_drop: float


class Explanation(_Answer):
    """One method's map for one target."""

    method: str
    target: ExplanationTarget
    overlay_png: str | None = None
    heatmap_png: str | None = None
    scores: Scores | None = None
    compute_ms: float = 0.0
    checks: dict[str, Any] | None = None
    evaluation: Evaluation | None = None
    dicom: dict[str, str] | None = None

    @cached_property
    def dicom_files(self) -> dict[str, bytes]:
        """The derived DICOM objects `output.dicom` asked for, kind → DICOM Part 10 bytes (empty
        when none was asked)."""
        return {kind: base64.b64decode(data) for kind, data in (self.dicom or {}).items()}

    @cached_property
    def map(self) -> np.ndarray | None:
        """The attribution map (float32, `scores.shape`), or None when scores were not asked."""
        return self.scores.array() if self.scores is not None else None

    @cached_property
    def overlay(self) -> Image.Image | None:
        """The map over the image, as the service rendered it."""
        return decode_png(self.overlay_png) if self.overlay_png else None

    @cached_property
    def heatmap(self) -> Image.Image | None:
        """The coloured map alone (only when `output.heatmap` was asked)."""
        return decode_png(self.heatmap_png) if self.heatmap_png else None


class ModelRef(_Answer):
    id: str
    version: str


class Timings(_Answer):
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    render_ms: float = 0.0
    total_ms: float = 0.0


class Provenance(_Answer):
    """What reproduces a map: the weights' digest, the service version and every parameter."""

    model_sha256: str = ""
    service_version: str = ""
    device: str = ""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)


class StoredInstance(_Answer):
    """A derived DICOM object the service stored on a DICOMweb server."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    kind: str


class StoredObjects(_Answer):
    """What a `store` request sent to its DICOMweb server, as the server acknowledged it."""

    dicomweb: str
    instances: list[StoredInstance]


class ExplainResult(_RawAnswer):
    """The answer of `explain`: predictions and one explanation per method and target, and
    for a `store` request the objects stored."""

    job_id: str
    model: ModelRef
    predictions: list[Prediction]
    explanations: list[Explanation]
    timings: Timings = Field(default_factory=Timings)
    provenance: Provenance = Field(default_factory=Provenance)
    cached: bool = False
    stored: StoredObjects | None = None

    def explanation(self, method: str, class_index: int | None = None) -> Explanation:
        """The explanation of `method` (for `class_index`, when several targets were asked)."""
        for explanation in self.explanations:
            if explanation.method == method and (
                class_index is None or explanation.target.class_index == class_index
            ):
                return explanation
        raise KeyError(f"no explanation of {method!r} for class {class_index}")


class VisualizationTarget(_Answer):
    kind: str
    class_index: int | None = None
    label: str | None = None
    layer: str | None = None
    channel: int | None = None


class Visualization(_RawAnswer):
    """The answer of `visualize`: the synthesised input and what it reached."""

    model: ModelRef
    image_png: str
    target: VisualizationTarget
    activation: float
    probability: float | None = None
    steps: int
    compute_ms: float = 0.0
    provenance: dict[str, Any] = Field(default_factory=dict)

    @cached_property
    def image(self) -> Image.Image:
        return decode_png(self.image_png)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobAccepted(_Answer):
    """The answer of `submit`: the job is queued."""

    job_id: str
    status: JobState
    url: str


class Job(_RawAnswer):
    """A job's state; `result` once it succeeded, `error` (the problem) once it failed."""

    job_id: str
    status: JobState
    model: str = ""
    created_at: float = 0.0
    error: dict[str, Any] | None = None

    @cached_property
    def result(self) -> ExplainResult | Visualization | None:
        data = self.raw.get("result")
        if not isinstance(data, dict):
            return None
        if "explanations" in data:
            return ExplainResult.from_json(data)
        return Visualization.from_json(data)


class InputSpec(_Answer):
    channels: int
    height: int
    width: int
    mean: list[float] = Field(default_factory=list)
    std: list[float] = Field(default_factory=list)


class ModelInfo(_Answer):
    """A model as `GET /v1/models` lists it."""

    id: str
    version: str = ""
    format: str = ""
    status: str = "ready"
    input: InputSpec | None = None
    labels: list[str] = Field(default_factory=list)
    cam_layers: list[str] = Field(default_factory=list)
    default_cam_layer: str | None = None
    methods: list[str] = Field(default_factory=list)
    sha256: str = ""
    description: str = ""
    live_workers: int = 0
    queued: int = 0


class MethodInfo(_Answer):
    """A method as `GET /v1/methods` lists it; `parameters` is the JSON Schema of its params."""

    id: str
    name: str = ""
    description: str = ""
    reference: str = ""
    passes: str = ""
    signed: bool = False
    parameters: dict[str, Any] = Field(default_factory=dict)
    endpoint: str = "POST /v1/explanations"
