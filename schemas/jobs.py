"""Jobs: the message a worker reads from a stream, and the status a client polls."""

from enum import StrEnum

from pydantic import BaseModel, Field

from schemas.explain import ExplainResponse, OutputOptions, Target
from schemas.problems import Problem


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobMessage(BaseModel):
    """One queued explanation, as the gateway writes it to the model's stream.

    The image itself is not in the message: it waits under `keys.job_image(job_id)`.
    """

    job_id: str
    model: str
    methods: list[str]
    target: Target
    params: dict[str, dict[str, object]] = Field(description="as applied: defaults filled in")
    output: OutputOptions
    reply_to: str | None = Field(default=None, description="gateway channel to notify")
    enqueued_at: float = Field(description="unix time in seconds")


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
    result: ExplainResponse | None = None
    error: Problem | None = None


class JobRecord:
    """Field names of the job hash (`keys.job_record`), shared by both sides."""

    STATUS = "status"
    OWNER = "owner"
    MODEL = "model"
    CREATED_AT = "created_at"
    RESULT = "result"
    ERROR = "error"
