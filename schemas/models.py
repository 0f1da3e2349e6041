"""Models in the repository: the manifest on disk and what the API says about a model."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelFormat = Literal["onnx", "safetensors"]
OutputActivation = Literal["softmax", "sigmoid", "none"]
"""How a classifier's logits become the probabilities its predictions report."""
ModelTask = Literal["classification", "segmentation"]
"""What a model's output is: (N, classes) logits, or (N, classes, H, W) logits per pixel."""
CamLayerKind = Literal["conv", "tokens"]
"""How a CAM layer's output is read as a grid: `conv`, (N, K, h, w); `tokens`, a transformer's
(N, extra + h·w, D) tokens (class and other extra tokens dropped) or (N, h, w, D) token grid."""


class Architecture(BaseModel):
    """An importable factory that builds the network whose weights a safetensors file holds."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(
        description="`module:callable`, e.g. `workers.demo.model:build_lesion_net`"
    )
    kwargs: dict[str, object] = Field(default_factory=dict)


MAX_INPUT_CHANNELS = 64

FrameChoice = Literal["consecutive"] | Annotated[list[int], Field(min_length=1)]
"""Which frames of a multi-frame DICOM fill an N-channel model's channels: `"consecutive"`, the
request's `dicom.frame` and the N − 1 after it; or a list of N frame indices, always those."""


class InputSpec(BaseModel):
    """The tensor a model takes: channels, size and per-channel normalisation.

    A 1- or 3-channel model takes PNG, JPEG and DICOM images (grey ones replicated to RGB, colour
    ones reduced to luma, as the model needs). A model of any other channel count takes DICOM
    frames as its channels, chosen by `frames`.
    """

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(ge=1, le=MAX_INPUT_CHANNELS)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    mean: list[float]
    std: list[float]
    frames: FrameChoice = Field(
        default="consecutive",
        description="for a model of other than 1 or 3 channels: which frames of a multi-frame "
        "DICOM become its channels, in order",
    )

    @property
    def color_mode(self) -> Literal["grayscale", "rgb", "frames"]:
        """How an image becomes the model's input: grey, RGB, or DICOM frames as channels."""
        if self.channels in (1, 3):
            return "grayscale" if self.channels == 1 else "rgb"
        return "frames"

    @model_validator(mode="after")
    def _one_frame_per_channel(self) -> "InputSpec":
        if isinstance(self.frames, list):
            if self.channels in (1, 3):
                raise ValueError("a frame list is for models of other than 1 or 3 channels")
            if len(self.frames) != self.channels:
                raise ValueError(f"frames lists {len(self.frames)} frames for {self.channels}")
            if min(self.frames) < 0:
                raise ValueError("a frame index is never negative")
        return self


class OutputSpec(BaseModel):
    """What a model's output means and where it is."""

    model_config = ConfigDict(extra="forbid")

    activation: OutputActivation = Field(
        default="softmax",
        description="`softmax`: one label per image, probabilities summing to 1; `sigmoid`: "
        "multi-label, each label's probability on its own; `none`: the logits are the scores",
    )
    key: str | None = Field(
        default=None,
        description="the entry holding the logits of a network that answers a mapping (`out` "
        "for torchvision's segmentation models) or an object (`logits` for Hugging Face "
        "models); for ONNX, the name of the graph output to read (default: the first)",
    )


class ModelManifest(BaseModel):
    """`models/<id>/<version>/manifest.json`: a model's declared interface."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    format: ModelFormat = Field(description="which weights file the workers serve")
    architecture: Architecture | None = Field(
        default=None, description="required for the safetensors format"
    )
    labels: list[str] = Field(min_length=1)
    input: InputSpec
    task: ModelTask = Field(
        default="classification",
        description="`segmentation`: the output is (N, labels, height, width) logits at the "
        "input's size, and targets name a class and a region",
    )
    output: OutputSpec = Field(default_factory=OutputSpec)
    background: int | None = Field(
        default=None,
        ge=0,
        description="segmentation: the background class, which `top1` and `topK` pass over",
    )
    cam_layer: str | None = Field(
        default=None, description="default layer for CAM methods; the last conv block if unset"
    )
    description: str = ""
    notes: str = ""


class ModelInfo(BaseModel):
    """What `GET /v1/models/{id}` answers; workers publish it when they load a model."""

    id: str
    version: str
    status: Literal["ready"] = Field(
        default="ready", description="a worker loaded it; `live_workers` says how many serve it now"
    )
    format: ModelFormat
    input: InputSpec
    task: ModelTask = "classification"
    output: OutputSpec = Field(default_factory=OutputSpec)
    background: int | None = None
    labels: list[str]
    cam_layers: list[str] = Field(description="layers usable for CAM methods, deepest first")
    cam_layer_channels: dict[str, int] = Field(
        default_factory=dict,
        description="each CAM layer's channel count (Score-CAM's cost counts one pass per channel)",
    )
    cam_layer_kinds: dict[str, CamLayerKind] = Field(
        default_factory=dict, description="each CAM layer's kind: `conv` or `tokens`"
    )
    default_cam_layer: str
    methods: list[str] = Field(description="the methods that apply to this model")
    unsupported: dict[str, str] = Field(
        default_factory=dict, description="each method that does not apply, with the reason"
    )
    sha256: str
    description: str = ""
    live_workers: int = 0
    queued: int = Field(default=0, description="jobs queued or in a worker's hands")


class FailedModel(BaseModel):
    """A model folder that a live worker could not load, and that no live worker serves.

    Workers publish it with every heartbeat; the gateway lists it only while it is fresh, as it
    counts only workers with a fresh heartbeat, and never while a live worker serves the model.
    """

    id: str = Field(description="the model folder's name")
    version: str = Field(description="the version folder's name")
    status: Literal["failed"] = Field(
        default="failed", description="no live worker serves it; `reason` says why"
    )
    reason: str = Field(description="why the folder cannot be served")
    reported_at: float = Field(description="when a worker last reported it, in Unix seconds")


ModelEntry = Annotated[ModelInfo | FailedModel, Field(discriminator="status")]
"""One model as `GET /v1/models` lists it: served (`ready`) or `failed`, told by `status`."""
