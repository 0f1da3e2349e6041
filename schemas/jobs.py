"""Jobs: the message a worker reads from a stream, and the status a client polls."""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from schemas.dicom import DicomOptions
from schemas.dicomweb import DicomwebSource, DicomwebStore
from schemas.explain import ExplainResponse, OutputOptions, Target
from schemas.problems import Problem
from schemas.visualizations import VisualizationParams, VisualizationResponse


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class QueuedJob(BaseModel):
    """What every message on a model's stream carries."""

    job_id: str
    model: str
    reply_to: str | None = Field(default=None, description="gateway channel to notify")
    enqueued_at: float = Field(description="unix time in seconds")
    request_id: str | None = Field(
        default=None, description="the admitting request's `X-Request-ID`, for the worker's log"
    )


class ExplanationJob(QueuedJob):
    """One queued explanation. The image is not in the message: it waits under
    `keys.job_image(job_id)`."""

    kind: Literal["explanation"] = "explanation"
    methods: list[str]
    target: Target
    params: dict[str, dict[str, object]] = Field(description="as requested, defaults filled in")
    output: OutputOptions
    dicom: DicomOptions | None = Field(default=None, description="as requested, for DICOM images")
    evaluate: bool = Field(default=False, description="measure each map's faithfulness")
    cache_key: str | None = Field(
        default=None, description="where the result is also kept for identical requests"
    )
    source: DicomwebSource | None = Field(
        default=None, description="the instance the worker fetches; the job then has no image"
    )
    store: DicomwebStore | None = Field(default=None, description="where to STOW-RS the result")


class VisualizationJob(QueuedJob):
    """One queued activation maximisation; its result is also cached under `cache_key`."""

    kind: Literal["visualization"] = "visualization"
    visualization: VisualizationParams
    cache_key: str


JobMessage = Annotated[ExplanationJob | VisualizationJob, Field(discriminator="kind")]
JOB_MESSAGE: TypeAdapter[ExplanationJob | VisualizationJob] = TypeAdapter(JobMessage)


class JobAccepted(BaseModel):
    """`202` answer: the job is queued."""

    job_id: str
    status: JobState
    url: str


class JobStatus(BaseModel):
    """`GET /v1/jobs/{id}`."""

    job_id: str
    status: JobState
    model: str
    created_at: float
    result: ExplainResponse | VisualizationResponse | None = None
    error: Problem | None = None


class JobRecord:
    """Field names of the job hash (`keys.job_record`), shared by both sides."""

    STATUS = "status"
    OWNER = "owner"
    MODEL = "model"
    CREATED_AT = "created_at"
    RESULT = "result"
    ERROR = "error"
    REPLY_TO = "reply_to"
    """The channel to announce the outcome on, when a retried request (same `Idempotency-Key`)
    now waits for the job in another gateway than the message's `reply_to`."""
