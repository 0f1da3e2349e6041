"""RFC 9457 problem details: the body of every error answer, and every kind of problem.

Each kind (slug, status, title) is defined here once; the gateway's exceptions and the workers'
job failures both name a kind, so a client reads the same title whichever side refused.
"""

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:glimpse:problem:"
MAX_LISTED_ERRORS = 20
"""Field errors one problem lists at most; `detail` says how many there were."""


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None
    job_id: str | None = None


def problem_type(slug: str) -> str:
    """The `type` URI of one kind of problem."""
    return PROBLEM_TYPE_PREFIX + slug


@dataclass(frozen=True)
class ProblemKind:
    """One kind of failure: the `type` slug, the HTTP status and the title it always carries."""

    slug: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return problem_type(self.slug)

    def problem(
        self,
        detail: str | None = None,
        *,
        job_id: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> Problem:
        return Problem(
            type=self.type,
            title=self.title,
            status=self.status,
            detail=detail,
            errors=errors,
            job_id=job_id,
        )


PROBLEM_KINDS: dict[str, ProblemKind] = {}


def _kind(slug: str, status: int, title: str) -> ProblemKind:
    kind = ProblemKind(slug, status, title)
    PROBLEM_KINDS[slug] = kind
    return kind


BAD_REQUEST = _kind("bad-request", 400, "Malformed request")
BAD_IMAGE = _kind("bad-image", 400, "Image cannot be decoded")
UNAUTHENTICATED = _kind("unauthenticated", 401, "Missing or wrong credentials")
FORBIDDEN = _kind("forbidden", 403, "The key lacks the scope")
NOT_FOUND = _kind("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = _kind("method-not-allowed", 405, "Method not allowed")
CONFLICT = _kind("conflict", 409, "The job is not in a state that allows this")
IMAGE_EXPIRED = _kind("image-expired", 410, "Image expired")
TOO_LARGE = _kind("too-large", 413, "Body or image too large")
UNSUPPORTED_MEDIA = _kind("unsupported-media-type", 415, "Unsupported media type or image format")
INVALID_REQUEST = _kind("invalid-request", 422, "Invalid request")
# 422, not 504: the same job runs as long again, so retrying it cannot help; a smaller one can.
JOB_TOO_LONG = _kind("job-too-long", 422, "The job exceeds the time budget")
RATE_LIMITED = _kind("rate-limited", 429, "Too many requests for this key")
QUEUE_FULL = _kind("queue-full", 429, "Too many queued jobs for this model")
INTERNAL = _kind("internal", 500, "Internal error")
ATTRIBUTION_FAILED = _kind("attribution-failed", 500, "Attribution failed")
TOO_MANY_DELIVERIES = _kind("too-many-deliveries", 500, "The job kept failing")
UNAVAILABLE = _kind("unavailable", 503, "Service unavailable")
TIMEOUT = _kind("timeout", 504, "The job did not finish in time")
DICOMWEB_FAILED = _kind("dicomweb-failed", 502, "The DICOMweb server failed or refused the call")
DICOMWEB_TIMEOUT = _kind("dicomweb-timeout", 504, "The DICOMweb server did not answer in time")
