"""One exception type per kind of problem the service answers (RFC 9457 problem+json).

The kind is read from the problem's `type` (`urn:glimpse:problem:<slug>`); an answer without a
known type falls back to its HTTP status.
"""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

PROBLEM_TYPE_PREFIX = "urn:glimpse:problem:"


class FieldError(BaseModel):
    """One entry of a 422's `errors`: where (`loc`) and what (`msg`, `type`)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = []
    msg: str = ""
    type: str = ""


class GlimpseError(Exception):
    """Base of every error this client raises for the service.

    `status` is the HTTP status (None when no answer came back), `type`, `title` and `detail`
    those of the problem, `errors` the field errors of an invalid request, `job_id` the job the
    problem concerns where the service names one, `retry_after` its `Retry-After` in seconds.
    """

    slug = ""

    def __init__(  # noqa: PLR0913 - one parameter per member of an RFC 9457 problem
        self,
        detail: str,
        *,
        status: int | None,
        title: str = "",
        type: str = "about:blank",
        errors: list[FieldError] | None = None,
        job_id: str | None = None,
        retry_after: float | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.job_id = job_id
        self.retry_after = retry_after
        self.problem: dict[str, Any] = dict(problem or {})
        super().__init__(self._summary())

    def _summary(self) -> str:
        head = f"{self.status} {self.title}".strip() if self.status else self.title
        text = f"{head}: {self.detail}" if head else self.detail
        for error in self.errors:
            where = ".".join(str(part) for part in error.loc)
            text += f"\n  {where}: {error.msg}" if where else f"\n  {error.msg}"
        return text


class ClientError(GlimpseError):
    """The service refused the request as it stands (a 4xx)."""


class ServerError(GlimpseError):
    """The service could not answer (a 5xx, or no answer at all)."""


class BadImage(ClientError):
    slug = "bad-image"


class Unauthenticated(ClientError):
    slug = "unauthenticated"


class Forbidden(ClientError):
    slug = "forbidden"


class NotFound(ClientError):
    slug = "not-found"


class Conflict(ClientError):
    slug = "conflict"


class TooLarge(ClientError):
    slug = "too-large"


class UnsupportedMedia(ClientError):
    slug = "unsupported-media-type"


class InvalidRequest(ClientError):
    slug = "invalid-request"


class RateLimited(ClientError):
    """This API key sent too many requests; `retry_after` says when to try again."""

    slug = "rate-limited"


class QueueFull(ClientError):
    """The model's queue is full; `retry_after` says when to try again."""

    slug = "queue-full"


class Unavailable(ServerError):
    """Redis is unreachable or no worker serves the model (503)."""

    slug = "unavailable"


class Unreachable(ServerError):
    """No answer came back: the connection failed. `status` is None."""


class Timeout(ServerError):
    """The job did not finish in time; poll `job_id` (which the 504 carries) for its outcome.

    Also raised, with `status` None, when no answer came within the client's own timeout.
    """

    slug = "timeout"


class JobFailed(GlimpseError):
    """An asynchronous job ended as `failed`; `cause` is the problem as its own error type."""

    def __init__(self, job_id: str, cause: GlimpseError) -> None:
        super().__init__(
            cause.detail,
            status=cause.status,
            title=cause.title,
            type=cause.type,
            errors=cause.errors,
            job_id=job_id,
            problem=cause.problem,
        )
        self.cause = cause


_BY_SLUG: dict[str, type[GlimpseError]] = {
    kind.slug: kind
    for kind in (
        BadImage,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        TooLarge,
        UnsupportedMedia,
        InvalidRequest,
        RateLimited,
        QueueFull,
        Unavailable,
        Timeout,
    )
}
_BY_STATUS: dict[int, type[GlimpseError]] = {
    400: BadImage,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    415: UnsupportedMedia,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
    504: Timeout,
}


def error_kind(problem_type: str, status: int) -> type[GlimpseError]:
    """The exception type of a problem: by its type slug, else by its status."""
    if problem_type.startswith(PROBLEM_TYPE_PREFIX):
        kind = _BY_SLUG.get(problem_type.removeprefix(PROBLEM_TYPE_PREFIX))
        if kind is not None:
            return kind
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ClientError if 400 <= status < 500 else ServerError


def problem_error(
    status: int, problem: Mapping[str, Any], retry_after: float | None = None
) -> GlimpseError:
    """The error a problem+json body (or any JSON error body) describes."""
    problem_type = str(problem.get("type") or "about:blank")
    status = _int(problem.get("status"), status)
    title = str(problem.get("title") or "")
    detail = problem.get("detail")
    raw_errors = problem.get("errors")
    errors: list[FieldError] = []
    if isinstance(raw_errors, list):
        for entry in raw_errors:
            try:
                errors.append(FieldError.model_validate(entry))
            except ValidationError:
                errors.append(FieldError(msg=str(entry)))
    job_id = problem.get("job_id")
    kind = error_kind(problem_type, status)
    return kind(
        str(detail) if detail is not None else title or f"HTTP {status}",
        status=status,
        title=title,
        type=problem_type,
        errors=errors,
        job_id=str(job_id) if job_id is not None else None,
        retry_after=retry_after,
        problem=problem,
    )


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
