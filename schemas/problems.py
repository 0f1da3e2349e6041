"""RFC 9457 problem details: the body of every error answer."""

from pydantic import BaseModel, ConfigDict

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:glimpse:problem:"


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
